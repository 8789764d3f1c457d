package handler

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"

	"github.com/fsnotify/fsnotify"
	"sigs.k8s.io/controller-runtime/pkg/log"
)

// socketWatch wakes a VMI's reconcile the moment its launcher's command
// socket appears in the pod's socket emptyDir, instead of at the next
// retry (a VM's start waits on this handoff).
type socketWatch struct {
	w *fsnotify.Watcher

	mu sync.Mutex
	// waiting holds, by watched directory, the wake of each socket
	// awaited there.
	waiting map[string]map[string]func()
}

func newSocketWatch() (*socketWatch, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	return &socketWatch{w: w, waiting: map[string]map[string]func(){}}, nil
}

// await calls wake once sock exists (at once when it does already). A
// socket awaited again replaces its wake.
func (s *socketWatch) await(sock string, wake func()) error {
	dir := filepath.Dir(sock)
	s.mu.Lock()
	if s.waiting[dir] == nil {
		if err := s.w.Add(dir); err != nil {
			s.mu.Unlock()
			return err
		}
		s.waiting[dir] = map[string]func(){}
	}
	s.waiting[dir][sock] = wake
	s.mu.Unlock()
	// It may have come before the watch did.
	if _, err := os.Stat(sock); err == nil {
		s.fire(sock)
	}
	return nil
}

// fire wakes whoever awaits path, and stops watching a directory no one
// awaits anything in any more.
func (s *socketWatch) fire(path string) {
	dir := filepath.Dir(path)
	s.mu.Lock()
	wake := s.waiting[dir][path]
	if wake != nil {
		delete(s.waiting[dir], path)
		if len(s.waiting[dir]) == 0 {
			delete(s.waiting, dir)
			_ = s.w.Remove(dir)
		}
	}
	s.mu.Unlock()
	if wake != nil {
		wake()
	}
}

// forget drops a watched directory that went (its pod did).
func (s *socketWatch) forget(dir string) {
	s.mu.Lock()
	delete(s.waiting, dir)
	s.mu.Unlock()
}

// run follows the watch until ctx ends.
func (s *socketWatch) run(ctx context.Context) error {
	defer func() { _ = s.w.Close() }()
	logger := log.FromContext(ctx).WithName("sockets")
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-s.w.Events:
			if !ok {
				return nil
			}
			switch {
			case ev.Has(fsnotify.Create):
				s.fire(ev.Name)
			case ev.Has(fsnotify.Remove):
				s.forget(ev.Name)
			}
		case err, ok := <-s.w.Errors:
			if !ok {
				return nil
			}
			// Overflow or the like: the reconciles' retries still find
			// every socket, only later.
			if !errors.Is(err, fsnotify.ErrEventOverflow) {
				logger.Info("watching launcher sockets", "err", err)
			}
		}
	}
}
