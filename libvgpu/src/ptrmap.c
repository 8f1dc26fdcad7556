/* Process-local open-addressing tables: device pointer / handle -> (device, size). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vgpu.h"

typedef struct {
    uint64_t key; /* 0 = empty, UINT64_MAX = deleted */
    uint64_t size;
    int dev;
} slot_t;

struct ptrmap {
    pthread_mutex_t mu;
    slot_t *slots;
    size_t cap, used, live;
};

ptrmap_t vgpu_allocs = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, 0};
ptrmap_t vgpu_handles = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, 0};
ptrmap_t vgpu_arrays = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, 0};

static size_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k;
}

static void insert(slot_t *s, size_t cap, uint64_t key, int dev, uint64_t size) {
    for (size_t i = hash(key) & (cap - 1);; i = (i + 1) & (cap - 1)) {
        if (s[i].key == 0 || s[i].key == UINT64_MAX) {
            s[i].key = key;
            s[i].dev = dev;
            s[i].size = size;
            return;
        }
    }
}

static int grow(ptrmap_t *m) {
    size_t ncap = m->cap ? m->cap * 2 : 1024;
    if (m->live * 4 < m->cap) ncap = m->cap; /* mostly tombstones: rehash in place size */
    slot_t *n = calloc(ncap, sizeof *n);
    if (!n) return -1;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key != 0 && m->slots[i].key != UINT64_MAX)
            insert(n, ncap, m->slots[i].key, m->slots[i].dev, m->slots[i].size);
    free(m->slots);
    m->slots = n;
    m->cap = ncap;
    m->used = m->live;
    return 0;
}

void ptrmap_put(ptrmap_t *m, uint64_t key, int dev, uint64_t size) {
    if (key == 0 || key == UINT64_MAX) return;
    pthread_mutex_lock(&m->mu);
    if ((m->used + 1) * 4 >= m->cap * 3 && grow(m) != 0) {
        pthread_mutex_unlock(&m->mu);
        return;
    }
    insert(m->slots, m->cap, key, dev, size);
    m->used++;
    m->live++;
    pthread_mutex_unlock(&m->mu);
}

int ptrmap_take(ptrmap_t *m, uint64_t key, int *dev, uint64_t *size) {
    int found = 0;
    pthread_mutex_lock(&m->mu);
    if (m->cap) {
        for (size_t i = hash(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
            if (m->slots[i].key == 0) break;
            if (m->slots[i].key == key) {
                *dev = m->slots[i].dev;
                *size = m->slots[i].size;
                m->slots[i].key = UINT64_MAX;
                m->live--;
                found = 1;
                break;
            }
        }
    }
    pthread_mutex_unlock(&m->mu);
    return found;
}
