/* Real-time check for the plugin's process callback, preloaded into the host (LD_PRELOAD).
 *
 * The plugin calls magnet_rtcheck_enter()/magnet_rtcheck_leave() around processBlock (weak symbols: without this
 * library they are null). Between the two, on that thread, every call to the allocator (malloc, calloc,
 * realloc, free, posix_memalign, aligned_alloc, memalign; C++ new/delete go through them) and to a blocking
 * primitive (pthread mutex lock, condition wait, rwlock, sem_wait, sleeps) is counted and named on stderr. At exit
 * the totals go to $MAGNET_RTCHECK_LOG as "callbacks=N violations=M". Non-blocking trylock calls are not counted.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern void* __libc_malloc (size_t);
extern void* __libc_calloc (size_t, size_t);
extern void* __libc_realloc (void*, size_t);
extern void __libc_free (void*);
extern void* __libc_memalign (size_t, size_t);

static __thread int in_callback;
static __thread int reporting;
static atomic_long callbacks;
static atomic_long violations;

static void flag (const char* what)
{
    if (! in_callback || reporting)
        return;
    reporting = 1;
    atomic_fetch_add (&violations, 1);
    char line[128];
    int n = snprintf (line, sizeof line, "rtcheck: %s on the audio thread inside processBlock\n", what);
    if (n > 0)
        (void) ! write (2, line, (size_t) n);
    reporting = 0;
}

void magnet_rtcheck_enter (void) { in_callback = 1; atomic_fetch_add (&callbacks, 1); }
void magnet_rtcheck_leave (void) { in_callback = 0; }

void* malloc (size_t n) { flag ("malloc"); return __libc_malloc (n); }
void* calloc (size_t a, size_t b) { flag ("calloc"); return __libc_calloc (a, b); }
void* realloc (void* p, size_t n) { flag ("realloc"); return __libc_realloc (p, n); }
void free (void* p) { if (p) flag ("free"); __libc_free (p); }
void* memalign (size_t a, size_t n) { flag ("memalign"); return __libc_memalign (a, n); }
void* aligned_alloc (size_t a, size_t n) { flag ("aligned_alloc"); return __libc_memalign (a, n); }
int posix_memalign (void** out, size_t a, size_t n)
{
    flag ("posix_memalign");
    void* p = __libc_memalign (a, n);
    if (! p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}

#define NEXT(ret, name, params)                                                                                    \
    static ret(*next_##name) params;                                                                               \
    static void resolve_##name (void)                                                                              \
    {                                                                                                              \
        if (! next_##name)                                                                                         \
            next_##name = (ret(*) params) dlsym (RTLD_NEXT, #name);                                                \
    }

NEXT (int, pthread_mutex_lock, (pthread_mutex_t*))
NEXT (int, pthread_cond_wait, (pthread_cond_t*, pthread_mutex_t*))
NEXT (int, pthread_cond_timedwait, (pthread_cond_t*, pthread_mutex_t*, const struct timespec*))
NEXT (int, pthread_rwlock_rdlock, (pthread_rwlock_t*))
NEXT (int, pthread_rwlock_wrlock, (pthread_rwlock_t*))
NEXT (int, sem_wait, (sem_t*))
NEXT (int, nanosleep, (const struct timespec*, struct timespec*))
NEXT (int, usleep, (useconds_t))
NEXT (int, pthread_join, (pthread_t, void**))

__attribute__ ((constructor)) static void init (void)
{
    resolve_pthread_mutex_lock (); resolve_pthread_cond_wait (); resolve_pthread_cond_timedwait ();
    resolve_pthread_rwlock_rdlock (); resolve_pthread_rwlock_wrlock (); resolve_sem_wait ();
    resolve_nanosleep (); resolve_usleep (); resolve_pthread_join ();
}

__attribute__ ((destructor)) static void fini (void)
{
    const char* path = getenv ("MAGNET_RTCHECK_LOG");
    if (! path)
        return;
    int fd = open (path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return;
    char line[128];
    int n = snprintf (line, sizeof line, "callbacks=%ld violations=%ld\n", atomic_load (&callbacks), atomic_load (&violations));
    if (n > 0)
        (void) ! write (fd, line, (size_t) n);
    close (fd);
}

int pthread_mutex_lock (pthread_mutex_t* m) { flag ("pthread_mutex_lock"); resolve_pthread_mutex_lock (); return next_pthread_mutex_lock (m); }
int pthread_cond_wait (pthread_cond_t* c, pthread_mutex_t* m) { flag ("pthread_cond_wait"); resolve_pthread_cond_wait (); return next_pthread_cond_wait (c, m); }
int pthread_cond_timedwait (pthread_cond_t* c, pthread_mutex_t* m, const struct timespec* t)
{ flag ("pthread_cond_timedwait"); resolve_pthread_cond_timedwait (); return next_pthread_cond_timedwait (c, m, t); }
int pthread_rwlock_rdlock (pthread_rwlock_t* l) { flag ("pthread_rwlock_rdlock"); resolve_pthread_rwlock_rdlock (); return next_pthread_rwlock_rdlock (l); }
int pthread_rwlock_wrlock (pthread_rwlock_t* l) { flag ("pthread_rwlock_wrlock"); resolve_pthread_rwlock_wrlock (); return next_pthread_rwlock_wrlock (l); }
int sem_wait (sem_t* s) { flag ("sem_wait"); resolve_sem_wait (); return next_sem_wait (s); }
int nanosleep (const struct timespec* a, struct timespec* b) { flag ("nanosleep"); resolve_nanosleep (); return next_nanosleep (a, b); }
int usleep (useconds_t u) { flag ("usleep"); resolve_usleep (); return next_usleep (u); }
int pthread_join (pthread_t t, void** r) { flag ("pthread_join"); resolve_pthread_join (); return next_pthread_join (t, r); }
