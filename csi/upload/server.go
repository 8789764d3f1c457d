// Package upload is the server of `podvirtctl image-upload`'s upload pod: it
// appends the bytes podvirtctl sends (through the API server's port-forward)
// to one file in the pod's CSI inline volume, which the CSI driver reads as
// it grows and imports like any image. The server only stores bytes; the
// driver, which does not trust this pod, checks their length, checksum and
// format.
package upload

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/podvirt/podvirt/contracts/upload"
)

// syncEvery bounds what a crash of the node can lose to unsynced pages: a
// resumed upload starts from what the file holds.
const syncEvery = 64 << 20

// Server appends one upload of Length bytes to Dir/disk.part.
type Server struct {
	Dir    string
	Length int64
	Log    *slog.Logger

	mu sync.Mutex // one PATCH at a time: offsets stay exact
}

// Handler serves the protocol (contracts/upload) and a health check.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+upload.HealthPath, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("HEAD "+upload.Path, s.head)
	mux.HandleFunc("PATCH "+upload.Path, s.patch)
	return mux
}

func (s *Server) path() string { return filepath.Join(s.Dir, upload.PartFile) }

// offset is how many bytes have arrived.
func (s *Server) offset() (int64, error) {
	fi, err := os.Stat(s.path())
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (s *Server) head(w http.ResponseWriter, _ *http.Request) {
	off, err := s.offset()
	if err != nil {
		http.Error(w, fmt.Sprintf("read the upload's state: %v", err), http.StatusInternalServerError)
		return
	}
	s.setHeaders(w, off)
	w.WriteHeader(http.StatusOK)
}

func (s *Server) setHeaders(w http.ResponseWriter, off int64) {
	w.Header().Set(upload.OffsetHeader, strconv.FormatInt(off, 10))
	w.Header().Set(upload.LengthHeader, strconv.FormatInt(s.Length, 10))
	w.Header().Set("Cache-Control", "no-store")
}

func (s *Server) patch(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Content-Type") != upload.ContentType {
		http.Error(w, "PATCH needs Content-Type "+upload.ContentType, http.StatusUnsupportedMediaType)
		return
	}
	want, err := strconv.ParseInt(r.Header.Get(upload.OffsetHeader), 10, 64)
	if err != nil || want < 0 {
		http.Error(w, "PATCH needs an "+upload.OffsetHeader+" header: the offset its body starts at", http.StatusBadRequest)
		return
	}
	if !s.mu.TryLock() {
		http.Error(w, "another upload to this claim is running; wait for it or stop it", http.StatusConflict)
		return
	}
	defer s.mu.Unlock()
	off, err := s.offset()
	if err != nil {
		http.Error(w, fmt.Sprintf("read the upload's state: %v", err), http.StatusInternalServerError)
		return
	}
	s.setHeaders(w, off)
	if want != off {
		http.Error(w, fmt.Sprintf("%s %d does not match the %d bytes that have arrived; resume from there", upload.OffsetHeader, want, off), http.StatusConflict)
		return
	}
	f, err := os.OpenFile(s.path(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		http.Error(w, fmt.Sprintf("open the upload file: %v", err), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	// One byte past what is left tells an oversized body from a full one.
	n, err := copySynced(f, io.LimitReader(r.Body, s.Length-off+1))
	off += n
	if off > s.Length {
		// Drop the excess so that what the file holds stays a prefix.
		_ = f.Truncate(s.Length)
		s.setHeaders(w, s.Length)
		http.Error(w, fmt.Sprintf("the body goes past the upload's length of %d bytes (the claim's %s): upload the file the claim was made for", s.Length, upload.SizeAnnotation), http.StatusRequestEntityTooLarge)
		return
	}
	s.setHeaders(w, off)
	if err != nil {
		s.Log.Info("upload interrupted; it resumes from the bytes that arrived", "offset", off, "length", s.Length, "err", err)
		http.Error(w, fmt.Sprintf("upload interrupted at %d of %d bytes: %v", off, s.Length, err), http.StatusBadRequest)
		return
	}
	if off == s.Length {
		s.Log.Info("upload complete", "length", s.Length)
	}
	w.WriteHeader(http.StatusNoContent)
}

// copySynced appends r to f, syncing every syncEvery bytes and at the end.
func copySynced(f *os.File, r io.Reader) (int64, error) {
	var total int64
	buf := make([]byte, 1<<20)
	unsynced := 0
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := f.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
			if unsynced += n; unsynced >= syncEvery {
				if serr := f.Sync(); serr != nil {
					return total, serr
				}
				unsynced = 0
			}
		}
		if errors.Is(err, io.EOF) {
			return total, f.Sync()
		}
		if err != nil {
			_ = f.Sync()
			return total, err
		}
	}
}
