/*
 * fluxtree/blockcache.h -- a NumPy memory handler that keeps freed large blocks for reuse.
 *
 * A derivative sweep allocates the same large arrays (activations, adjoints, tangent
 * blocks) call after call.  glibc returns blocks above its mmap threshold to the kernel on
 * free, so every call pays page faults to get them back (4,000 faults per 8-tangent HVP of
 * a small MLP).  Arrays created while this handler is NumPy's current one (the derivative
 * sweeps set it, see fluxtree/_kernels/_memory.pyx) come from and return to a small cache:
 *
 *   - blocks of at least FT_CACHE_MIN_BYTES are kept on free, up to FT_CACHE_SLOTS blocks
 *     and a byte limit (ft_cache_limit); a request takes the smallest cached block that
 *     fits and wastes at most a quarter of it;
 *   - smaller blocks, and everything the cache cannot serve, go to malloc/calloc/free;
 *   - NumPy passes the requested size to free, which may be less than a reused block's
 *     capacity: the cache records that size, so it only ever under-uses a block.
 * A spin lock (GCC/Clang builtins) guards the table: NumPy may allocate without the GIL.
 */
#ifndef FLUXTREE_BLOCKCACHE_H
#define FLUXTREE_BLOCKCACHE_H

#include <stdlib.h>
#include <string.h>

#define FT_CACHE_SLOTS 64
#define FT_CACHE_MIN_BYTES ((size_t)64 * 1024)

typedef struct { void *ptr; size_t size; } ft_cache_slot;

static ft_cache_slot ft_cache_table[FT_CACHE_SLOTS];
static size_t ft_cache_bytes = 0;
static size_t ft_cache_limit = (size_t)512 * 1024 * 1024;
static volatile int ft_cache_lock_word = 0;

static inline void ft_cache_lock(void) { while (__sync_lock_test_and_set(&ft_cache_lock_word, 1)) {} }
static inline void ft_cache_unlock(void) { __sync_lock_release(&ft_cache_lock_word); }

/* A cached block of at least `size` bytes (wasting at most a quarter), or NULL. */
static void *ft_cache_take(size_t size)
{
    int best = -1;
    void *p = NULL;
    if (size < FT_CACHE_MIN_BYTES)
        return NULL;
    ft_cache_lock();
    for (int i = 0; i < FT_CACHE_SLOTS; i++) {
        size_t s = ft_cache_table[i].size;
        if (ft_cache_table[i].ptr != NULL && s >= size && s - s / 4 <= size
                && (best < 0 || s < ft_cache_table[best].size))
            best = i;
    }
    if (best >= 0) {
        p = ft_cache_table[best].ptr;
        ft_cache_bytes -= ft_cache_table[best].size;
        ft_cache_table[best].ptr = NULL;
        ft_cache_table[best].size = 0;
    }
    ft_cache_unlock();
    return p;
}

/* Keep `p` (of `size` usable bytes) if there is room; returns 0 when the caller must free. */
static int ft_cache_keep(void *p, size_t size)
{
    int kept = 0;
    if (size < FT_CACHE_MIN_BYTES)
        return 0;
    ft_cache_lock();
    if (ft_cache_bytes + size <= ft_cache_limit) {
        for (int i = 0; i < FT_CACHE_SLOTS; i++) {
            if (ft_cache_table[i].ptr == NULL) {
                ft_cache_table[i].ptr = p;
                ft_cache_table[i].size = size;
                ft_cache_bytes += size;
                kept = 1;
                break;
            }
        }
    }
    ft_cache_unlock();
    return kept;
}

/* Free every cached block; returns how many bytes were released. */
static size_t ft_cache_release(void)
{
    size_t released;
    ft_cache_lock();
    for (int i = 0; i < FT_CACHE_SLOTS; i++) {
        if (ft_cache_table[i].ptr != NULL)
            free(ft_cache_table[i].ptr);
        ft_cache_table[i].ptr = NULL;
        ft_cache_table[i].size = 0;
    }
    released = ft_cache_bytes;
    ft_cache_bytes = 0;
    ft_cache_unlock();
    return released;
}

static void *ft_cache_malloc(void *ctx, size_t size)
{
    void *p = ft_cache_take(size);
    (void)ctx;
    return p != NULL ? p : malloc(size ? size : 1);
}

static void *ft_cache_calloc(void *ctx, size_t nelem, size_t elsize)
{
    size_t size = nelem * elsize;
    void *p;
    (void)ctx;
    if (elsize != 0 && size / elsize != nelem)
        return NULL;
    p = ft_cache_take(size);
    if (p == NULL)
        return calloc(nelem ? nelem : 1, elsize ? elsize : 1);
    memset(p, 0, size);
    return p;
}

static void *ft_cache_realloc(void *ctx, void *ptr, size_t new_size)
{
    (void)ctx;
    return realloc(ptr, new_size ? new_size : 1);
}

static void ft_cache_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    if (ptr != NULL && !ft_cache_keep(ptr, size))
        free(ptr);
}

#endif
