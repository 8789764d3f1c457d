package handler

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestSocketWatch: a reconcile waiting for a launcher's socket is woken
// when the socket is created, and at once for one that is there already.
func TestSocketWatch(t *testing.T) {
	s, err := newSocketWatch()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = s.run(ctx) }()

	dir := t.TempDir()
	woken := make(chan string, 2)
	sock := filepath.Join(dir, "uid.sock")
	if err := s.await(sock, func() { woken <- "created" }); err != nil {
		t.Fatal(err)
	}
	select {
	case w := <-woken:
		t.Fatalf("woken (%s) before the socket exists", w)
	default:
	}
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	select {
	case <-woken:
	case <-time.After(5 * time.Second):
		t.Fatal("not woken within 5 s of the socket's creation")
	}
	if err := s.await(sock, func() { woken <- "there" }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-woken:
	default:
		t.Fatal("not woken at once for a socket that exists")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waiting) != 0 {
		t.Errorf("still watching %v after every socket came", s.waiting)
	}
}
