// Random-read latency of this machine's memory, the floor under the engine's per-event cost at
// a million accounts (ARCHITECTURE.md, "Performance budget"). Built and run by
// scripts/memory-latency.
//
// Over a working set of SIZE_MB (default 1024) of 64-byte nodes:
//  - dependent: each read's address comes from the previous read (a pointer chase around one
//    random cycle), so no two misses overlap: the full latency of a miss;
//  - independent: addresses come from a generator, not from memory, so the CPU overlaps as
//    many misses as it can: the cost per read when the work is arranged to fetch ahead.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct node { struct node *next; uint64_t pad[7]; } node;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next_random(void) {
  rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
  return rng;
}

int main(int argc, char **argv) {
  size_t mb = argc > 1 ? strtoul(argv[1], 0, 10) : 1024;
  size_t n = mb * 1024 * 1024 / sizeof(node);
  node *nodes = malloc(n * sizeof(node));
  size_t *order = malloc(n * sizeof(size_t));
  if (!nodes || !order) { perror("malloc"); return 1; }
  for (size_t i = 0; i < n; i++) order[i] = i;
  for (size_t i = n - 1; i > 0; i--) {
    size_t j = next_random() % (i + 1);
    size_t t = order[i]; order[i] = order[j]; order[j] = t;
  }
  for (size_t i = 0; i < n; i++) {
    nodes[order[i]].next = &nodes[order[(i + 1) % n]];
    nodes[order[i]].pad[0] = i;
  }
  free(order);

  size_t reads = 20 * 1000 * 1000;
  node *p = &nodes[0];
  double start = now();
  for (size_t i = 0; i < reads; i++) p = p->next;
  double dependent = (now() - start) / reads * 1e9;

  uint64_t sum = 0;
  start = now();
  for (size_t i = 0; i < reads; i++) sum += nodes[next_random() % n].pad[0];
  double independent = (now() - start) / reads * 1e9;

  printf("working set %zu MB: dependent random read %.0f ns, independent %.1f ns (%p %llu)\n",
         mb, dependent, independent, (void *)p, (unsigned long long)sum);
  return 0;
}
