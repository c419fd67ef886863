package elfdeps

import (
	"bytes"
	"debug/elf"
	"os"
	"path"
	"slices"
	"testing"
)

// tree is a file tree of a merged-/usr Debian system.
type tree map[string]string // path → link target ("" for a file)

func (t tree) Lookup(p string) (string, bool) {
	link, ok := t[p]
	return link, ok
}

func debianTree() tree {
	return tree{
		"/lib":                            "usr/lib",
		"/lib64":                          "usr/lib64",
		"/usr":                            "",
		"/usr/lib":                        "",
		"/usr/lib64":                      "",
		"/usr/lib/x86_64-linux-gnu":       "",
		"/usr/lib64/ld-linux-x86-64.so.2": "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
		"/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2": "",
		"/usr/lib/x86_64-linux-gnu/libc.so.6":            "",
		"/opt/app/lib/libapp.so.1":                       "libapp.so.1.0",
		"/opt/app/lib/libapp.so.1.0":                     "",
	}
}

func TestReadAndResolveARealProgram(t *testing.T) {
	b, err := os.ReadFile("testdata/true.elf")
	if err != nil {
		t.Fatal(err)
	}
	if !IsELF(b) {
		t.Fatal("true.elf is not ELF by its magic")
	}
	deps, err := Read(bytes.NewReader(b), int64(len(b)), "usr/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if deps.Interp != "/lib64/ld-linux-x86-64.so.2" || !slices.Contains(deps.Needed, "libc.so.6") {
		t.Fatalf("deps = %+v", deps)
	}
	got := Resolve(debianTree(), deps)
	want := []string{
		"/usr/lib64/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
		"/usr/lib/x86_64-linux-gnu/libc.so.6",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Resolve = %q\nwant %q", got, want)
	}
}

func TestResolveRunPathFirstAndLinks(t *testing.T) {
	deps := Deps{Needed: []string{"libapp.so.1", "libc.so.6", "libmissing.so", "../escape.so"}, RunPath: []string{"/opt/app/lib"}, Machine: elf.EM_X86_64}
	got := Resolve(debianTree(), deps)
	want := []string{"/opt/app/lib/libapp.so.1", "/opt/app/lib/libapp.so.1.0", "/usr/lib/x86_64-linux-gnu/libc.so.6"}
	if !slices.Equal(got, want) {
		t.Errorf("Resolve = %q\nwant %q", got, want)
	}
}

func TestLinkLoopsEnd(t *testing.T) {
	loop := tree{"/lib": "lib2", "/lib2": "lib", "/a": "b", "/b": "a"}
	if got := Resolve(loop, Deps{Interp: "/a", Needed: []string{"libc.so.6"}}); len(got) != 0 {
		t.Errorf("Resolve in a loop = %q", got)
	}
	if got := canonicalDir(loop, "/lib/x"); path.IsAbs(got) == false {
		t.Errorf("canonicalDir = %q", got)
	}
}

func TestReadRefusesGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("\x7fELF"), []byte("#!/bin/sh\n"), bytes.Repeat([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1}, 100)} {
		if _, err := Read(bytes.NewReader(b), int64(len(b)), "x"); err == nil {
			t.Errorf("Read(%q…) succeeded", b[:min(len(b), 8)])
		}
	}
}

func FuzzRead(f *testing.F) {
	b, err := os.ReadFile("testdata/true.elf")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b[:min(len(b), 4096)])
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		deps, err := Read(bytes.NewReader(data), int64(len(data)), "usr/bin/x")
		if err != nil {
			return
		}
		Resolve(debianTree(), deps) // must end, and not panic
	})
}
