"""Wall time of two songs mastered by two Python threads vs one after the other (the GIL is
released while refmaster works). Usage: python threads.py SONG_A SONG_B REFERENCE
Prints both wall times, the cores the process kept busy in each (CPU time / wall time), and their ratio (threads / sequential); no assertion: speed is measured, not
tested."""

import sys
import threading
import time

import refmaster


def main() -> None:
    a, b, ref = sys.argv[1:4]
    refmaster.master(a, ref)  # warm the page cache
    t0, c0 = time.perf_counter(), time.process_time()
    refmaster.master(a, ref)
    refmaster.master(b, ref)
    sequential, seq_cpu = time.perf_counter() - t0, time.process_time() - c0
    threads = [threading.Thread(target=refmaster.master, args=(song, ref)) for song in (a, b)]
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    parallel, par_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"one after the other {sequential:.2f} s wall ({seq_cpu / sequential:.2f} cores busy), "
        f"two threads {parallel:.2f} s wall ({par_cpu / parallel:.2f} cores busy), "
        f"ratio {parallel / sequential:.2f}"
    )


if __name__ == "__main__":
    main()
