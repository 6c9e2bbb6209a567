package testenv

import (
	"bytes"
	"os"
	"strconv"
	"strings"
)

// ChildrenOf lists the processes whose parent is pid, read from /proc so a
// test can pin, signal or outlive-check what a process it started started.
func ChildrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	parent := strconv.Itoa(pid)
	var kids []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces and parentheses.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) > 1 && fields[1] == parent {
			kids = append(kids, p)
		}
	}
	return kids
}
