/*
 * sgxemu preload library: runs unmodified SGX host programs against sgxemu, in their own process.
 *
 * - libc interposers for /dev/sgx_enclave and /dev/sgx_provision (open, open64, openat,
 *   openat64, the fortified __open_2 variants, the stat family, access, ioctl, mmap, munmap,
 *   mprotect, close, dup): a device fd is a real fd (a memfd) the emulator knows; mappings of it
 *   are PROT_NONE anonymous reservations in the host, so the address-space layout is the
 *   kernel's, and every call goes to the emulated driver (sgxemu.preload.runtime).
 * - getauxval(AT_SYSINFO_EHDR): an in-memory vDSO image exporting __vdso_sgx_enter_enclave
 *   (PT_DYNAMIC + DT_HASH, and section headers), plus trampolines to the real vDSO's symbols.
 * - ENCLU executed by host code: SIGILL (SIGSEGV on a CPU with SGX) at 0F 01 D7 is emulated.
 * - CPUID leaf 0x12 and the SGX feature bits: CPUID faulting (ARCH_SET_CPUID) where the kernel
 *   offers it, else the runtime patches the program's CPUID instructions to UD2.
 * - A watcher thread turns host signals that arrive while enclave code runs into an AEX.
 *
 * No Python.h here (see sgxemu_python.c).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "sgxemu_preload.h"

#define ARCH_GET_CPUID 0x1011
#define ARCH_SET_CPUID 0x1012
#define MAX_FDS 65536
#define MAX_RANGES 512
#define STACK_SIZE (8UL << 20)
#define MISC_MAJOR 10
#define SGX_ENCLAVE_MINOR 125
#define SGX_PROVISION_MINOR 126

/* ------------------------------------------------------------------------------------------ */
/* Logging                                                                                      */

static int verbose;

static struct timespec t_start;

void sgxemu_log(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	struct timespec now;
	int n;

	clock_gettime(CLOCK_MONOTONIC, &now);
	if (verbose >= 2)
		n = snprintf(buf, sizeof(buf), "sgxemu: [%.1f ms] ",
			     (double)(now.tv_sec - t_start.tv_sec) * 1e3 +
				     (double)(now.tv_nsec - t_start.tv_nsec) / 1e6);
	else
		n = snprintf(buf, sizeof(buf), "sgxemu: ");

	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(2, buf, (size_t)n) < 0)
		return;
}

void sgxemu_die(const char *fmt, ...)
{
	char buf[400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	sgxemu_log("fatal: %s", buf);
	_exit(70);
}

/* ------------------------------------------------------------------------------------------ */
/* Raw system calls (never re-enter the interposers)                                            */

/* The kernel's convention: an address, or -errno. */
static void *host_mmap(void *addr, size_t len, int prot, int flags, int fd, long off)
{
	long r = syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	return (void *)(r == -1 ? -(long)errno : r);
}

static long host_munmap(void *addr, size_t len)
{
	return syscall(SYS_munmap, addr, len) ? -errno : 0;
}

static long host_mprotect(void *addr, size_t len, int prot)
{
	return syscall(SYS_mprotect, addr, len, prot) ? -errno : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* State                                                                                        */

static int active;		/* the preload is on (not disabled, not a Python host) */
static unsigned char fake_fd[MAX_FDS];	/* 1: /dev/sgx_enclave, 2: /dev/sgx_provision */
static pthread_mutex_t range_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t ranges[MAX_RANGES][2];	/* enclave mappings, as the runtime last reported */
static atomic_uint nranges;

__attribute__((tls_model("initial-exec"))) __thread struct sgxemu_block sgxemu_tls_block;

static int cpuid_mode;	/* 0 none, 1 faulting, 2 patched */
static struct sgxemu_cpuid_entry cpuid_table[SGXEMU_MAX_CPUID];
static atomic_uint cpuid_entries;
static pthread_mutex_t patch_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t *patched;	/* sorted addresses of CPUIDs made UD2 */
static size_t npatched, cap_patched;

/* Per-thread record the watcher reads. */
struct thread_rec {
	struct thread_rec *next;
	pid_t tid;
	atomic_int inside;		/* in the emulation (signals blocked by us) */
	atomic_ullong uc;		/* its Unicorn instance */
	atomic_int signal_exit;		/* the watcher wants an AEX for a pending signal */
	sigset_t app_mask;		/* the thread's own mask at entry */
};
static pthread_mutex_t rec_lock = PTHREAD_MUTEX_INITIALIZER;
static struct thread_rec *recs;
static __thread struct thread_rec *my_rec;
static atomic_int inside_count;
static pthread_mutex_t watch_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watch_cond = PTHREAD_COND_INITIALIZER;
static int watcher_started;

static int is_fake(int fd)
{
	return fd >= 0 && fd < MAX_FDS && fake_fd[fd];
}

static int device_kind(const char *path)
{
	if (!path)
		return 0;
	if (!strcmp(path, "/dev/sgx_enclave") || !strcmp(path, "/dev/sgx/enclave"))
		return 1;
	if (!strcmp(path, "/dev/sgx_provision") || !strcmp(path, "/dev/sgx/provision"))
		return 2;
	return 0;
}

static int overlaps_enclave(uint64_t start, uint64_t len)
{
	unsigned n = atomic_load(&nranges);
	uint64_t end = start + len;

	for (unsigned i = 0; i < n; i++)
		if (ranges[i][0] < end && start < ranges[i][1])
			return 1;
	return 0;
}

static void api_set_ranges(const uint64_t *pairs, uint64_t n)
{
	pthread_mutex_lock(&range_lock);
	if (n > MAX_RANGES) {
		sgxemu_log("more than %d enclave mappings: munmap/mprotect of the rest not forwarded",
			   MAX_RANGES);
		n = MAX_RANGES;
	}
	atomic_store(&nranges, 0);
	for (uint64_t i = 0; i < n; i++) {
		ranges[i][0] = pairs[2 * i];
		ranges[i][1] = pairs[2 * i + 1];
	}
	atomic_store(&nranges, (unsigned)n);
	pthread_mutex_unlock(&range_lock);
}

static void api_set_cpuid(const struct sgxemu_cpuid_entry *e, uint64_t n)
{
	if (n > SGXEMU_MAX_CPUID)
		n = SGXEMU_MAX_CPUID;
	atomic_store(&cpuid_entries, 0);
	memcpy(cpuid_table, e, n * sizeof(*e));
	atomic_store(&cpuid_entries, (unsigned)n);
}

static struct thread_rec *thread_rec(void)
{
	if (my_rec)
		return my_rec;
	struct thread_rec *r = calloc(1, sizeof(*r));
	if (!r)
		sgxemu_die("out of memory");
	r->tid = (pid_t)syscall(SYS_gettid);
	pthread_mutex_lock(&rec_lock);
	r->next = recs;
	recs = r;
	pthread_mutex_unlock(&rec_lock);
	my_rec = r;
	return r;
}

static void api_set_engine(uint64_t uc)
{
	atomic_store(&thread_rec()->uc, uc);
}

static uint64_t api_take_signal_exit(void)
{
	return (uint64_t)atomic_exchange(&thread_rec()->signal_exit, 0);
}

static long api_patch_text(uint64_t addr, const uint8_t *bytes, uint64_t n)
{
	uint64_t page = addr & ~4095UL, end = (addr + n + 4095) & ~4095UL;
	long r = host_mprotect((void *)page, end - page, PROT_READ | PROT_WRITE | PROT_EXEC);

	if (r)
		return r;
	memcpy((void *)addr, bytes, n);
	__builtin___clear_cache((char *)addr, (char *)addr + n);
	return host_mprotect((void *)page, end - page, PROT_READ | PROT_EXEC);
}

static void api_add_patched(uint64_t addr)
{
	pthread_mutex_lock(&patch_lock);
	if (npatched == cap_patched) {
		size_t cap = cap_patched ? 2 * cap_patched : 64;
		uint64_t *p = realloc(patched, cap * sizeof(*p));
		if (!p) {
			pthread_mutex_unlock(&patch_lock);
			return;
		}
		patched = p;
		cap_patched = cap;
	}
	size_t i = npatched;
	while (i && patched[i - 1] > addr) {
		patched[i] = patched[i - 1];
		i--;
	}
	patched[i] = addr;
	npatched++;
	pthread_mutex_unlock(&patch_lock);
}

static int is_patched(uint64_t addr)
{
	size_t lo = 0, hi = npatched;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (patched[mid] < addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < npatched && patched[lo] == addr;
}

static uint64_t api_block_address(void)
{
	return (uint64_t)(uintptr_t)&sgxemu_tls_block;
}

struct sgxemu_api sgxemu_api_table = {
	.abi_version = SGXEMU_ABI_VERSION,
	.host_mmap = host_mmap,
	.host_munmap = host_munmap,
	.host_mprotect = host_mprotect,
	.set_ranges = api_set_ranges,
	.set_cpuid = api_set_cpuid,
	.set_engine = api_set_engine,
	.take_signal_exit = api_take_signal_exit,
	.patch_text = api_patch_text,
	.add_patched = api_add_patched,
	.block_address = api_block_address,
};

/* ------------------------------------------------------------------------------------------ */
/* Real libc functions                                                                          */

#define REAL(name) real_##name
#define DEFINE_REAL(ret, name, ...)                                                          \
	static ret (*real_##name)(__VA_ARGS__);                                              \
	static ret (*get_##name(void))(__VA_ARGS__)                                          \
	{                                                                                    \
		if (!real_##name)                                                            \
			real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name);           \
		return real_##name;                                                          \
	}

DEFINE_REAL(int, open, const char *, int, ...)
DEFINE_REAL(int, open64, const char *, int, ...)
DEFINE_REAL(int, openat, int, const char *, int, ...)
DEFINE_REAL(int, openat64, int, const char *, int, ...)
DEFINE_REAL(int, __open_2, const char *, int)
DEFINE_REAL(int, __open64_2, const char *, int)
DEFINE_REAL(int, __openat_2, int, const char *, int)
DEFINE_REAL(int, __openat64_2, int, const char *, int)
DEFINE_REAL(int, stat, const char *, struct stat *)
DEFINE_REAL(int, stat64, const char *, struct stat64 *)
DEFINE_REAL(int, lstat, const char *, struct stat *)
DEFINE_REAL(int, lstat64, const char *, struct stat64 *)
DEFINE_REAL(int, fstat, int, struct stat *)
DEFINE_REAL(int, fstat64, int, struct stat64 *)
DEFINE_REAL(int, fstatat, int, const char *, struct stat *, int)
DEFINE_REAL(int, fstatat64, int, const char *, struct stat64 *, int)
DEFINE_REAL(int, __xstat, int, const char *, struct stat *)
DEFINE_REAL(int, __xstat64, int, const char *, struct stat64 *)
DEFINE_REAL(int, __lxstat, int, const char *, struct stat *)
DEFINE_REAL(int, __lxstat64, int, const char *, struct stat64 *)
DEFINE_REAL(int, __fxstat, int, int, struct stat *)
DEFINE_REAL(int, __fxstat64, int, int, struct stat64 *)
DEFINE_REAL(int, access, const char *, int)
DEFINE_REAL(int, faccessat, int, const char *, int, int)
DEFINE_REAL(int, close, int)
DEFINE_REAL(int, dup, int)
DEFINE_REAL(int, dup2, int, int)
DEFINE_REAL(int, dup3, int, int, int)
DEFINE_REAL(unsigned long, getauxval, unsigned long)
DEFINE_REAL(int, sigaction, int, const struct sigaction *, struct sigaction *)

/* ------------------------------------------------------------------------------------------ */
/* Files                                                                                        */

static int fake_open(const char *path, int flags, int kind)
{
	int err;
	int fd = (int)syscall(SYS_memfd_create, kind == 1 ? "sgx_enclave" : "sgx_provision",
			      (flags & O_CLOEXEC) ? MFD_CLOEXEC : 0);

	if (fd < 0)
		return -1;
	if (fd >= MAX_FDS) {
		syscall(SYS_close, fd);
		errno = EMFILE;
		return -1;
	}
	long r = sgxemu_py_call("open", "(yii)", path, flags, fd);
	if (r < 0) {
		err = (int)-r;
		syscall(SYS_close, fd);
		errno = err;
		return -1;
	}
	fake_fd[fd] = (unsigned char)kind;
	return fd;
}

static int want_device(const char *path)
{
	return active ? device_kind(path) : 0;
}

static int at_device(int dirfd, const char *path)
{
	(void)dirfd;	/* the device paths are absolute */
	return want_device(path);
}

#define OPEN_MODE(flags, mode)                                                               \
	do {                                                                                 \
		if ((flags) & (O_CREAT | __O_TMPFILE)) {                                     \
			va_list ap;                                                          \
			va_start(ap, flags);                                                 \
			mode = va_arg(ap, int);                                              \
			va_end(ap);                                                          \
		}                                                                            \
	} while (0)

int open(const char *path, int flags, ...)
{
	int mode = 0, kind = want_device(path);

	OPEN_MODE(flags, mode);
	if (kind)
		return fake_open(path, flags, kind);
	return get_open()(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	int mode = 0, kind = want_device(path);

	OPEN_MODE(flags, mode);
	if (kind)
		return fake_open(path, flags, kind);
	return get_open64()(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	int mode = 0, kind = at_device(dirfd, path);

	OPEN_MODE(flags, mode);
	if (kind)
		return fake_open(path, flags, kind);
	return get_openat()(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	int mode = 0, kind = at_device(dirfd, path);

	OPEN_MODE(flags, mode);
	if (kind)
		return fake_open(path, flags, kind);
	return get_openat64()(dirfd, path, flags, mode);
}

int __open_2(const char *path, int flags)
{
	int kind = want_device(path);

	return kind ? fake_open(path, flags, kind) : get___open_2()(path, flags);
}

int __open64_2(const char *path, int flags)
{
	int kind = want_device(path);

	return kind ? fake_open(path, flags, kind) : get___open64_2()(path, flags);
}

int __openat_2(int dirfd, const char *path, int flags)
{
	int kind = at_device(dirfd, path);

	return kind ? fake_open(path, flags, kind) : get___openat_2()(dirfd, path, flags);
}

int __openat64_2(int dirfd, const char *path, int flags)
{
	int kind = at_device(dirfd, path);

	return kind ? fake_open(path, flags, kind) : get___openat64_2()(dirfd, path, flags);
}

static int empty_path(const char *path)
{
	return path && !*path;
}

/* The device node as stat(2) shows it: a character device, misc major 10. */
static void fill_stat(struct stat *st, int kind)
{
	memset(st, 0, sizeof(*st));
	st->st_mode = S_IFCHR | 0666;
	st->st_nlink = 1;
	st->st_rdev = makedev(MISC_MAJOR, kind == 1 ? SGX_ENCLAVE_MINOR : SGX_PROVISION_MINOR);
	st->st_blksize = 4096;
	st->st_ino = kind == 1 ? 0x5e0001 : 0x5e0002;
	st->st_dev = makedev(0, 5);
}

int stat(const char *path, struct stat *st)
{
	int kind = want_device(path);

	if (kind) {
		fill_stat(st, kind);
		return 0;
	}
	return get_stat()(path, st);
}

int stat64(const char *path, struct stat64 *st)
{
	int kind = want_device(path);

	if (kind) {
		fill_stat((struct stat *)st, kind);
		return 0;
	}
	return get_stat64()(path, st);
}

int lstat(const char *path, struct stat *st)
{
	int kind = want_device(path);

	if (kind) {
		fill_stat(st, kind);
		return 0;
	}
	return get_lstat()(path, st);
}

int lstat64(const char *path, struct stat64 *st)
{
	int kind = want_device(path);

	if (kind) {
		fill_stat((struct stat *)st, kind);
		return 0;
	}
	return get_lstat64()(path, st);
}

int fstat(int fd, struct stat *st)
{
	if (is_fake(fd)) {
		fill_stat(st, fake_fd[fd]);
		return 0;
	}
	return get_fstat()(fd, st);
}

int fstat64(int fd, struct stat64 *st)
{
	if (is_fake(fd)) {
		fill_stat((struct stat *)st, fake_fd[fd]);
		return 0;
	}
	return get_fstat64()(fd, st);
}

int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
	int kind = at_device(dirfd, path);

	if (!kind && (flags & AT_EMPTY_PATH) && empty_path(path) && is_fake(dirfd))
		kind = fake_fd[dirfd];
	if (kind) {
		fill_stat(st, kind);
		return 0;
	}
	return get_fstatat()(dirfd, path, st, flags);
}

int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
	int kind = at_device(dirfd, path);

	if (!kind && (flags & AT_EMPTY_PATH) && empty_path(path) && is_fake(dirfd))
		kind = fake_fd[dirfd];
	if (kind) {
		fill_stat((struct stat *)st, kind);
		return 0;
	}
	return get_fstatat64()(dirfd, path, st, flags);
}

int __xstat(int ver, const char *path, struct stat *st)
{
	int kind = want_device(path);

	if (kind) {
		fill_stat(st, kind);
		return 0;
	}
	return get___xstat()(ver, path, st);
}

int __xstat64(int ver, const char *path, struct stat64 *st)
{
	int kind = want_device(path);

	if (kind) {
		fill_stat((struct stat *)st, kind);
		return 0;
	}
	return get___xstat64()(ver, path, st);
}

int __lxstat(int ver, const char *path, struct stat *st)
{
	int kind = want_device(path);

	if (kind) {
		fill_stat(st, kind);
		return 0;
	}
	return get___lxstat()(ver, path, st);
}

int __lxstat64(int ver, const char *path, struct stat64 *st)
{
	int kind = want_device(path);

	if (kind) {
		fill_stat((struct stat *)st, kind);
		return 0;
	}
	return get___lxstat64()(ver, path, st);
}

int __fxstat(int ver, int fd, struct stat *st)
{
	if (is_fake(fd)) {
		fill_stat(st, fake_fd[fd]);
		return 0;
	}
	return get___fxstat()(ver, fd, st);
}

int __fxstat64(int ver, int fd, struct stat64 *st)
{
	if (is_fake(fd)) {
		fill_stat((struct stat *)st, fake_fd[fd]);
		return 0;
	}
	return get___fxstat64()(ver, fd, st);
}

int access(const char *path, int mode)
{
	if (want_device(path))
		return 0;	/* crw-rw-rw- */
	return get_access()(path, mode);
}

int faccessat(int dirfd, const char *path, int mode, int flags)
{
	if (at_device(dirfd, path))
		return 0;
	return get_faccessat()(dirfd, path, mode, flags);
}

int close(int fd)
{
	if (is_fake(fd)) {
		fake_fd[fd] = 0;
		sgxemu_py_call("close", "(i)", fd);
		return (int)syscall(SYS_close, fd);
	}
	return get_close()(fd);
}

static int dup_result(int oldfd, int newfd)
{
	if (newfd >= 0 && newfd < MAX_FDS && is_fake(oldfd)) {
		if (is_fake(newfd) && newfd != oldfd)
			sgxemu_py_call("close", "(i)", newfd);
		if (newfd != oldfd) {
			sgxemu_py_call("dup", "(ii)", oldfd, newfd);
			fake_fd[newfd] = fake_fd[oldfd];
		}
	} else if (newfd >= 0 && is_fake(newfd) && newfd != oldfd) {
		sgxemu_py_call("close", "(i)", newfd);	/* dup2 over a device fd closed it */
		fake_fd[newfd] = 0;
	}
	return newfd;
}

int dup(int oldfd)
{
	return dup_result(oldfd, get_dup()(oldfd));
}

int dup2(int oldfd, int newfd)
{
	int fake_new = is_fake(newfd) && newfd != oldfd;
	int r = get_dup2()(oldfd, newfd);

	if (r < 0 || (!fake_new && !is_fake(oldfd)))
		return r;
	return dup_result(oldfd, r);
}

int dup3(int oldfd, int newfd, int flags)
{
	int fake_new = is_fake(newfd) && newfd != oldfd;
	int r = get_dup3()(oldfd, newfd, flags);

	if (r < 0 || (!fake_new && !is_fake(oldfd)))
		return r;
	return dup_result(oldfd, r);
}

/* ------------------------------------------------------------------------------------------ */
/* ioctl and the memory-management calls                                                        */

static long ret_errno(long r)
{
	if (r < 0) {
		errno = (int)-r;
		return -1;
	}
	return r;
}

int ioctl(int fd, unsigned long request, ...)
{
	va_list ap;
	void *arg;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (is_fake(fd))
		return (int)ret_errno(sgxemu_py_call("ioctl", "(ikK)", fd, request,
						     (unsigned long long)(uintptr_t)arg));
	return (int)syscall(SYS_ioctl, fd, request, arg);
}

/* An address, or -errno. */
static void *do_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	if (is_fake(fd))
		return (void *)sgxemu_py_call("mmap", "(KKiiiL)", (unsigned long long)(uintptr_t)addr,
					      (unsigned long long)len, prot, flags, fd, (long long)off);
	if ((flags & MAP_FIXED) && atomic_load(&nranges) &&
	    overlaps_enclave((uint64_t)(uintptr_t)addr, len)) {
		/* A mapping replacing (part of) an enclave mapping: the enclave VMA goes first. */
		sgxemu_py_call("forget", "(KK)", (unsigned long long)(uintptr_t)addr,
			       (unsigned long long)len);
	}
	return host_mmap(addr, len, prot, flags, fd, off);
}

static void host_changed(void)
{
	__atomic_add_fetch(&sgxemu_api_table.host_generation, 1, __ATOMIC_RELAXED);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	void *r = do_mmap(addr, len, prot, flags, fd, off);

	host_changed();
	if ((long)r < 0 && (long)r > -4096) {
		errno = (int)-(long)r;
		return MAP_FAILED;
	}
	return r;
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
	__attribute__((alias("mmap")));

void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	va_list ap;
	void *new_addr = NULL;

	if (flags & MREMAP_FIXED) {
		va_start(ap, flags);
		new_addr = va_arg(ap, void *);
		va_end(ap);
	}
	if (atomic_load(&nranges) && (overlaps_enclave((uint64_t)(uintptr_t)old, old_len) ||
				      ((flags & MREMAP_FIXED) &&
				       overlaps_enclave((uint64_t)(uintptr_t)new_addr, new_len)))) {
		errno = EINVAL;	/* enclave mappings cannot move (VM_DONTEXPAND | VM_IO) */
		return MAP_FAILED;
	}
	long r = syscall(SYS_mremap, old, old_len, new_len, flags, new_addr);
	host_changed();
	return (void *)r;	/* syscall() already made it MAP_FAILED with errno */
}

int munmap(void *addr, size_t len)
{
	host_changed();
	if (atomic_load(&nranges) && overlaps_enclave((uint64_t)(uintptr_t)addr, len))
		return (int)ret_errno(sgxemu_py_call("munmap", "(KK)",
						     (unsigned long long)(uintptr_t)addr,
						     (unsigned long long)len));
	return (int)ret_errno(host_munmap(addr, len));
}

int mprotect(void *addr, size_t len, int prot)
{
	host_changed();
	if (atomic_load(&nranges) && overlaps_enclave((uint64_t)(uintptr_t)addr, len))
		return (int)ret_errno(sgxemu_py_call("mprotect", "(KKi)",
						     (unsigned long long)(uintptr_t)addr,
						     (unsigned long long)len, prot));
	return (int)ret_errno(host_mprotect(addr, len, prot));
}

/* ------------------------------------------------------------------------------------------ */
/* The vDSO image                                                                               */

#define VDSO_MAX_SYMS 48
#define VDSO_SIZE 16384
#define TRAMP_SIZE 16

static pthread_once_t vdso_once = PTHREAD_ONCE_INIT;
static uint8_t *vdso_image;

static uint32_t elf_hash(const char *name)
{
	uint32_t h = 0, g;

	while (*name) {
		h = (h << 4) + (uint8_t)*name++;
		g = h & 0xf0000000;
		if (g)
			h ^= g >> 24;
		h &= ~g;
	}
	return h;
}

struct vsym {
	const char *name;
	uint64_t target;
	int is_func;
};

/* The real vDSO's exported symbols (so their users keep working through ours). */
static int real_vdso_symbols(struct vsym *out, int max)
{
	unsigned long base = get_getauxval() ? get_getauxval()(AT_SYSINFO_EHDR) : 0;
	int n = 0;

	if (!base)
		return 0;
	const Elf64_Ehdr *eh = (const Elf64_Ehdr *)base;
	const Elf64_Phdr *ph = (const Elf64_Phdr *)(base + eh->e_phoff);
	const Elf64_Dyn *dyn = NULL;
	uint64_t load_off = 0;

	for (int i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_type == PT_DYNAMIC)
			dyn = (const Elf64_Dyn *)(base + ph[i].p_offset);
		if (ph[i].p_type == PT_LOAD)
			load_off = ph[i].p_vaddr - ph[i].p_offset;
	}
	if (!dyn)
		return 0;
	const Elf64_Sym *symtab = NULL;
	const char *strtab = NULL;
	const uint32_t *hash = NULL;
	for (; dyn->d_tag != DT_NULL; dyn++) {
		uint64_t p = base + dyn->d_un.d_ptr - load_off;
		if (dyn->d_tag == DT_SYMTAB)
			symtab = (const Elf64_Sym *)p;
		else if (dyn->d_tag == DT_STRTAB)
			strtab = (const char *)p;
		else if (dyn->d_tag == DT_HASH)
			hash = (const uint32_t *)p;
	}
	if (!symtab || !strtab || !hash)
		return 0;
	uint32_t nsyms = hash[1];	/* nchain: the number of symbols */
	for (uint32_t i = 1; i < nsyms && n < max; i++) {
		const Elf64_Sym *s = &symtab[i];
		if (s->st_shndx == SHN_UNDEF || ELF64_ST_BIND(s->st_info) == STB_LOCAL)
			continue;
		if (ELF64_ST_TYPE(s->st_info) != STT_FUNC)
			continue;
		if (!strcmp(strtab + s->st_name, "__vdso_sgx_enter_enclave"))
			continue;
		out[n].name = strtab + s->st_name;
		out[n].target = base + s->st_value - load_off;
		out[n].is_func = 1;
		n++;
	}
	return n;
}

/*
 * Layout (all offsets are addresses relative to the image, p_vaddr == p_offset):
 *   0x000 ELF header, 0x040 program headers (PT_LOAD, PT_DYNAMIC)
 *   0x100 .hash  0x400 .dynsym  0xc00 .dynstr  0x1400 .dynamic  0x1500 .shstrtab
 *   0x1600 section headers  0x2000 .text (16-byte trampolines: jmp *0(%rip); .quad target)
 */
#define O_HASH 0x100
#define O_DYNSYM 0x400
#define O_DYNSTR 0xc00
#define O_DYNAMIC 0x1400
#define O_SHSTR 0x1500
#define O_SHDR 0x1600
#define O_TEXT 0x2000

static void build_vdso(void)
{
	struct vsym syms[VDSO_MAX_SYMS];
	int n = 0;
	uint8_t *img = host_mmap(NULL, VDSO_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				 -1, 0);

	if ((long)img < 0 && (long)img > -4096)
		return;
	syms[n++] = (struct vsym){ "__vdso_sgx_enter_enclave", (uint64_t)(uintptr_t)sgxemu_vdso_enter, 1 };
	n += real_vdso_symbols(syms + n, VDSO_MAX_SYMS - n);

	/* .dynstr */
	char *str = (char *)img + O_DYNSTR;
	size_t strsz = 1;
	uint32_t name_off[VDSO_MAX_SYMS];
	for (int i = 0; i < n; i++) {
		size_t len = strlen(syms[i].name) + 1;
		if (strsz + len > O_DYNAMIC - O_DYNSTR - 16) {
			n = i;
			break;
		}
		memcpy(str + strsz, syms[i].name, len);
		name_off[i] = (uint32_t)strsz;
		strsz += len;
	}
	size_t soname = strsz;
	memcpy(str + strsz, "linux-vdso.so.1", 16);
	strsz += 16;

	/* .text trampolines and .dynsym (index 0 is the null symbol) */
	Elf64_Sym *dynsym = (Elf64_Sym *)(img + O_DYNSYM);
	for (int i = 0; i < n; i++) {
		uint8_t *t = img + O_TEXT + (size_t)i * TRAMP_SIZE;
		t[0] = 0xff;
		t[1] = 0x25;	/* jmp *0(%rip) */
		memset(t + 2, 0, 4);
		memcpy(t + 6, &syms[i].target, 8);
		t[14] = 0xcc;
		t[15] = 0xcc;
		Elf64_Sym *s = &dynsym[i + 1];
		s->st_name = name_off[i];
		s->st_info = ELF64_ST_INFO(STB_GLOBAL, STT_FUNC);
		s->st_other = STV_DEFAULT;
		s->st_shndx = 5;	/* .text */
		s->st_value = O_TEXT + (uint64_t)i * TRAMP_SIZE;
		s->st_size = TRAMP_SIZE;
	}
	uint32_t nsym = (uint32_t)n + 1;

	/* .hash: SysV hash table */
	uint32_t *hash = (uint32_t *)(img + O_HASH);
	uint32_t nbucket = 17;
	hash[0] = nbucket;
	hash[1] = nsym;
	uint32_t *bucket = hash + 2, *chain = hash + 2 + nbucket;
	for (uint32_t i = 1; i < nsym; i++) {
		uint32_t b = elf_hash(str + dynsym[i].st_name) % nbucket;
		chain[i] = bucket[b];
		bucket[b] = i;
	}

	/* .dynamic */
	Elf64_Dyn *dyn = (Elf64_Dyn *)(img + O_DYNAMIC);
	int d = 0;
	dyn[d++] = (Elf64_Dyn){ DT_SONAME, { soname } };
	dyn[d++] = (Elf64_Dyn){ DT_HASH, { O_HASH } };
	dyn[d++] = (Elf64_Dyn){ DT_STRTAB, { O_DYNSTR } };
	dyn[d++] = (Elf64_Dyn){ DT_SYMTAB, { O_DYNSYM } };
	dyn[d++] = (Elf64_Dyn){ DT_STRSZ, { strsz } };
	dyn[d++] = (Elf64_Dyn){ DT_SYMENT, { sizeof(Elf64_Sym) } };
	dyn[d++] = (Elf64_Dyn){ DT_NULL, { 0 } };

	/* .shstrtab */
	static const char shstr[] = "\0.hash\0.dynsym\0.dynstr\0.dynamic\0.text\0.shstrtab";
	memcpy(img + O_SHSTR, shstr, sizeof(shstr));

	/* section headers: null .hash .dynsym .dynstr .dynamic .text .shstrtab */
	Elf64_Shdr *sh = (Elf64_Shdr *)(img + O_SHDR);
	sh[1] = (Elf64_Shdr){ 1, SHT_HASH, SHF_ALLOC, O_HASH, O_HASH,
			      (2 + nbucket + nsym) * 4, 2, 0, 8, 4 };
	sh[2] = (Elf64_Shdr){ 7, SHT_DYNSYM, SHF_ALLOC, O_DYNSYM, O_DYNSYM,
			      nsym * sizeof(Elf64_Sym), 3, 1, 8, sizeof(Elf64_Sym) };
	sh[3] = (Elf64_Shdr){ 15, SHT_STRTAB, SHF_ALLOC, O_DYNSTR, O_DYNSTR, strsz, 0, 0, 1, 0 };
	sh[4] = (Elf64_Shdr){ 23, SHT_DYNAMIC, SHF_ALLOC | SHF_WRITE, O_DYNAMIC, O_DYNAMIC,
			      (uint64_t)d * sizeof(Elf64_Dyn), 3, 0, 8, sizeof(Elf64_Dyn) };
	sh[5] = (Elf64_Shdr){ 32, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, O_TEXT, O_TEXT,
			      (uint64_t)n * TRAMP_SIZE, 0, 0, 16, 0 };
	sh[6] = (Elf64_Shdr){ 38, SHT_STRTAB, 0, 0, O_SHSTR, sizeof(shstr), 0, 0, 1, 0 };

	/* program headers */
	Elf64_Phdr *ph = (Elf64_Phdr *)(img + sizeof(Elf64_Ehdr));
	ph[0] = (Elf64_Phdr){ PT_LOAD, PF_R | PF_X, 0, 0, 0, VDSO_SIZE, VDSO_SIZE, 4096 };
	ph[1] = (Elf64_Phdr){ PT_DYNAMIC, PF_R, O_DYNAMIC, O_DYNAMIC, O_DYNAMIC,
			      (uint64_t)d * sizeof(Elf64_Dyn), (uint64_t)d * sizeof(Elf64_Dyn), 8 };

	/* ELF header */
	Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
	memcpy(eh->e_ident, ELFMAG, SELFMAG);
	eh->e_ident[EI_CLASS] = ELFCLASS64;
	eh->e_ident[EI_DATA] = ELFDATA2LSB;
	eh->e_ident[EI_VERSION] = EV_CURRENT;
	eh->e_ident[EI_OSABI] = ELFOSABI_SYSV;
	eh->e_type = ET_DYN;
	eh->e_machine = EM_X86_64;
	eh->e_version = EV_CURRENT;
	eh->e_entry = 0;
	eh->e_phoff = sizeof(Elf64_Ehdr);
	eh->e_shoff = O_SHDR;
	eh->e_ehsize = sizeof(Elf64_Ehdr);
	eh->e_phentsize = sizeof(Elf64_Phdr);
	eh->e_phnum = 2;
	eh->e_shentsize = sizeof(Elf64_Shdr);
	eh->e_shnum = 7;
	eh->e_shstrndx = 6;

	host_mprotect(img, VDSO_SIZE, PROT_READ | PROT_EXEC);
	vdso_image = img;
	sgxemu_api_table.vdso_base = (uint64_t)(uintptr_t)img;
}

unsigned long getauxval(unsigned long type)
{
	if (type == AT_SYSINFO_EHDR && active) {
		pthread_once(&vdso_once, build_vdso);
		if (vdso_image)
			return (unsigned long)(uintptr_t)vdso_image;
	}
	return get_getauxval() ? get_getauxval()(type) : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Signals: the watcher, and ENCLU/CPUID emulation in SIGILL/SIGSEGV handlers                   */

static void async_set(sigset_t *set)
{
	sigfillset(set);
	/* Synchronous signals stay deliverable (a real fault in the emulator must not hang). */
	sigdelset(set, SIGSEGV);
	sigdelset(set, SIGBUS);
	sigdelset(set, SIGILL);
	sigdelset(set, SIGFPE);
	sigdelset(set, SIGTRAP);
	sigdelset(set, SIGSYS);
	sigdelset(set, SIGABRT);
}

static uint64_t read_sigmask(const char *line)
{
	return strtoull(line, NULL, 16);
}

/* Signals pending for thread `tid` (thread-directed) and for the process (shared). */
static uint64_t pending_for(pid_t tid)
{
	char path[64], buf[4096];
	uint64_t set = 0;
	int fd;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/task/%d/status", (int)tid);
	fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	syscall(SYS_close, fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	char *p = strstr(buf, "\nSigPnd:");
	if (p)
		set |= read_sigmask(p + 8);
	p = strstr(buf, "\nShdPnd:");
	if (p)
		set |= read_sigmask(p + 8);
	return set;
}

static uint64_t sigset_bits(const sigset_t *s)
{
	uint64_t bits = 0;

	for (int sig = 1; sig <= 64; sig++)
		if (sigismember(s, sig) == 1)
			bits |= 1ULL << (sig - 1);
	return bits;
}

static void *watcher(void *unused)
{
	sigset_t all;

	(void)unused;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	for (;;) {
		pthread_mutex_lock(&watch_lock);
		while (!atomic_load(&inside_count))
			pthread_cond_wait(&watch_cond, &watch_lock);
		pthread_mutex_unlock(&watch_lock);
		struct timespec ts = { 0, 2 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		pthread_mutex_lock(&rec_lock);
		for (struct thread_rec *r = recs; r; r = r->next) {
			if (!atomic_load(&r->inside))
				continue;
			uint64_t pend = pending_for(r->tid) & ~sigset_bits(&r->app_mask);
			if (!pend)
				continue;
			atomic_store(&r->signal_exit, 1);
			uint64_t uc = atomic_load(&r->uc);
			if (uc && sgxemu_api_table.uc_emu_stop)
				sgxemu_api_table.uc_emu_stop(uc);
		}
		pthread_mutex_unlock(&rec_lock);
	}
	return NULL;
}

static void start_watcher(void)
{
	pthread_t t;
	sigset_t all, old;

	pthread_mutex_lock(&watch_lock);
	if (!watcher_started) {
		sigfillset(&all);
		pthread_sigmask(SIG_BLOCK, &all, &old);
		if (!pthread_create(&t, NULL, watcher, NULL)) {
			pthread_detach(t);
			watcher_started = 1;
		}
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	pthread_mutex_unlock(&watch_lock);
}

void sgxemu_alloc_stack(struct sgxemu_block *b)
{
	uint8_t *s = host_mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);

	if ((long)s < 0 && (long)s > -4096)
		sgxemu_die("cannot allocate the emulation stack");
	b->stack_top = (uint64_t)(uintptr_t)(s + STACK_SIZE - 64);
}

/* A signal this thread queued itself for an emulated fault: not an ENCLU/CPUID trap. */
static __thread int synthesized_sig;

/* Queue `sig` for this thread, as the kernel's force_sig_fault would (unblock, no ignore). */
static void queue_signal(int sig, int code, uint64_t addr, sigset_t *restore_mask)
{
	siginfo_t si;
	struct sigaction cur;

	memset(&si, 0, sizeof(si));
	si.si_signo = sig;
	si.si_code = code;
	si.si_addr = (void *)(uintptr_t)addr;
	get_sigaction()(sig, NULL, &cur);
	if (sigismember(restore_mask, sig) || cur.sa_handler == SIG_IGN) {
		struct sigaction dfl;
		memset(&dfl, 0, sizeof(dfl));
		dfl.sa_handler = SIG_DFL;
		get_sigaction()(sig, &dfl, NULL);
		sigdelset(restore_mask, sig);
	}
	synthesized_sig = sig;
	syscall(SYS_rt_tgsigqueueinfo, getpid(), (pid_t)syscall(SYS_gettid), sig, &si);
}

/* Run the emulation of the ENCLU described by block `b` (any stack; signals handled by caller). */
static long emulate(void *arg)
{
	struct sgxemu_block *b = arg;
	struct thread_rec *r = thread_rec();

	atomic_store(&r->inside, 1);
	if (atomic_fetch_add(&inside_count, 1) == 0) {
		pthread_mutex_lock(&watch_lock);
		pthread_cond_signal(&watch_cond);
		pthread_mutex_unlock(&watch_lock);
	}
	b->xstate = 0;
	atomic_store(&r->signal_exit, 0);	/* the watcher looks again */
	b->action = (uint64_t)sgxemu_py_call_enclu(b);
	atomic_fetch_sub(&inside_count, 1);
	atomic_store(&r->inside, 0);
	return 0;
}

/* Called by the vDSO trampoline, on the private stack. */
struct sgxemu_block *sgxemu_enclu_entry(struct sgxemu_block *b)
{
	sigset_t async, old;
	int saved_errno = errno;
	struct thread_rec *r = thread_rec();

	if (!watcher_started)
		start_watcher();
	async_set(&async);
	pthread_sigmask(SIG_BLOCK, &async, &old);
	r->app_mask = old;
	emulate(b);
	if (b->action == SGXEMU_SIGNAL)
		queue_signal((int)b->signo, (int)b->sig_code, b->sig_addr, &old);
	errno = saved_errno;
	pthread_sigmask(SIG_SETMASK, &old, NULL);	/* pending signals are delivered here */
	return b;
}

/* ucontext <-> block (glibc's REG_* order is the kernel's sigcontext order). */
static const int greg_of[18] = {
	REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI, REG_R8,
	REG_R9, REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15, REG_EFL, REG_RIP,
};

static struct sigaction app_act[65];	/* the program's own SIGILL/SIGSEGV dispositions */
static int app_act_set[65];

static int enclu_at(const uint8_t *ip)
{
	return ip[0] == 0x0f && ip[1] == 0x01 && ip[2] == 0xd7;
}

static void emulate_enclu_uc(ucontext_t *uc)
{
	struct sgxemu_block *b = &sgxemu_tls_block;
	greg_t *g = uc->uc_mcontext.gregs;
	sigset_t async, cur;
	int saved_errno = errno;
	struct thread_rec *r = thread_rec();

	if (!watcher_started)
		start_watcher();
	for (int i = 0; i < 18; i++)
		b->gpr[i] = (uint64_t)g[greg_of[i]];
	if (uc->uc_mcontext.fpregs)
		memcpy(b->fx, uc->uc_mcontext.fpregs, 512);
	if (!b->stack_top)
		sgxemu_alloc_stack(b);
	async_set(&async);
	pthread_sigmask(SIG_BLOCK, &async, &cur);
	r->app_mask = uc->uc_sigmask;
	sgxemu_call_on_stack(emulate, b, (void *)(uintptr_t)b->stack_top);
	for (int i = 0; i < 18; i++)
		g[greg_of[i]] = (greg_t)b->gpr[i];
	if (b->xstate && uc->uc_mcontext.fpregs)
		memcpy(uc->uc_mcontext.fpregs, b->fx, 512);
	if (b->action == SGXEMU_SIGNAL) {
		/* Blocked until sigreturn; then delivered at the new context (the AEP). */
		sigset_t one;
		sigemptyset(&one);
		sigaddset(&one, (int)b->signo);
		pthread_sigmask(SIG_BLOCK, &one, NULL);
		queue_signal((int)b->signo, (int)b->sig_code, b->sig_addr, &uc->uc_sigmask);
	}
	errno = saved_errno;
}

static int cpuid_lookup(uint32_t leaf, uint32_t sub, uint32_t regs[4])
{
	unsigned n = atomic_load(&cpuid_entries);
	int hit = 0;

	for (unsigned i = 0; i < n; i++) {
		const struct sgxemu_cpuid_entry *e = &cpuid_table[i];
		if (e->leaf != leaf || e->subleaf != sub)
			continue;
		for (int k = 0; k < 4; k++)
			regs[k] = (regs[k] & ~e->mask[k]) | (e->regs[k] & e->mask[k]);
		hit = 1;
	}
	return hit;
}

int sgxemu_cpuid_faulting(int on)
{
	if (cpuid_mode != 1)
		return 0;
	int was = syscall(SYS_arch_prctl, ARCH_GET_CPUID, 0) == 0;	/* 0: CPUID faults */
	syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1);
	return was;
}

static void real_cpuid(uint32_t leaf, uint32_t sub, uint32_t regs[4])
{
	if (cpuid_mode == 1)
		syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
	__asm__ volatile("cpuid"
			 : "=a"(regs[0]), "=b"(regs[1]), "=c"(regs[2]), "=d"(regs[3])
			 : "a"(leaf), "c"(sub));
	if (cpuid_mode == 1)
		syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
}

static void emulate_cpuid_uc(ucontext_t *uc, int len)
{
	greg_t *g = uc->uc_mcontext.gregs;
	uint32_t leaf = (uint32_t)g[REG_RAX], sub = (uint32_t)g[REG_RCX], regs[4];

	if (!atomic_load(&cpuid_entries))
		sgxemu_py_ensure();	/* the runtime fills the table when it starts */
	real_cpuid(leaf, sub, regs);
	if (leaf == 0 && regs[0] < 0x12 && atomic_load(&cpuid_entries))
		regs[0] = 0x12;	/* leaf 0x12 must be enumerated */
	cpuid_lookup(leaf, sub, regs);
	g[REG_RAX] = regs[0];
	g[REG_RBX] = regs[1];
	g[REG_RCX] = regs[2];
	g[REG_RDX] = regs[3];
	g[REG_RIP] += len;
}

static void chain(int sig, siginfo_t *si, void *ctx, int synthesized)
{
	struct sigaction *a = &app_act[sig];

	if (app_act_set[sig] && a->sa_handler != SIG_DFL && a->sa_handler != SIG_IGN) {
		if (a->sa_flags & SA_SIGINFO)
			a->sa_sigaction(sig, si, ctx);
		else
			a->sa_handler(sig);
		return;
	}
	/* Default action. A real fault: reset and return, the instruction faults again and the
	 * process dies of it. An emulated one, or one sent by kill()/tgkill()/sigqueue() (si_code
	 * <= 0, which no instruction repeats): raise it again now that nothing catches it. */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	get_sigaction()(sig, &dfl, NULL);
	if (synthesized || si->si_code <= 0)
		syscall(SYS_rt_tgsigqueueinfo, getpid(), (pid_t)syscall(SYS_gettid), sig, si);
}

static void on_trap(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;
	const uint8_t *ip = (const uint8_t *)uc->uc_mcontext.gregs[REG_RIP];

	if (synthesized_sig == sig) {
		synthesized_sig = 0;
		chain(sig, si, ctx, 1);
		return;
	}
	/* Only traps raised by an instruction that was fetched: a fault fetching RIP itself
	 * (si_addr == RIP) must not make this handler read RIP. */
	if ((si->si_code > 0 || si->si_code == SI_KERNEL) &&
	    (sig != SIGSEGV || si->si_addr != (void *)ip)) {
		if (sig == SIGILL && cpuid_mode == 2 && ip[0] == 0x0f && ip[1] == 0x0b &&
		    is_patched((uint64_t)(uintptr_t)ip)) {
			emulate_cpuid_uc(uc, 2);
			return;
		}
		if (sig == SIGSEGV && cpuid_mode == 1 && ip[0] == 0x0f && ip[1] == 0xa2) {
			emulate_cpuid_uc(uc, 2);
			return;
		}
		if ((sig == SIGILL || sig == SIGSEGV) && enclu_at(ip) && active) {
			emulate_enclu_uc(uc);
			return;
		}
	}
	chain(sig, si, ctx, 0);
}

static void install_trap(int sig)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_trap;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	get_sigaction()(sig, &sa, &app_act[sig]);
	app_act_set[sig] = 1;
}

/* The program's own handlers for SIGILL/SIGSEGV are kept aside and chained to. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	if (active && (sig == SIGILL || sig == SIGSEGV) && app_act_set[sig]) {
		if (old)
			*old = app_act[sig];
		if (act)
			app_act[sig] = *act;
		return 0;
	}
	return get_sigaction()(sig, act, old);
}

sighandler_t signal(int sig, sighandler_t handler)
{
	struct sigaction act, old;

	memset(&act, 0, sizeof(act));
	act.sa_handler = handler;
	act.sa_flags = SA_RESTART;
	sigemptyset(&act.sa_mask);
	if (sigaction(sig, &act, &old))
		return SIG_ERR;
	return old.sa_handler;
}

/* ------------------------------------------------------------------------------------------ */
/* Start-up                                                                                     */

static int is_python_host(void)
{
	char exe[512];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	if (n <= 0)
		return 0;
	exe[n] = 0;
	const char *base = strrchr(exe, '/');
	base = base ? base + 1 : exe;
	return !strncmp(base, "python", 6);
}

/*
 * The CPUID sites of the main program from the runtime's cache (runtime.cpuid_cache_file):
 * 1 when the cache answered (and the sites, if any, are patched), 0 when Python must scan.
 */
static int patch_from_cache(uint64_t base)
{
	char path[600], line[64];
	struct stat st;
	const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
	int n;

	if (get_stat()("/proc/self/exe", &st))
		return 0;
	if (xdg && *xdg)
		n = snprintf(path, sizeof(path), "%s/sgxemu/cpuid-sites/", xdg);
	else if (home && *home)
		n = snprintf(path, sizeof(path), "%s/.cache/sgxemu/cpuid-sites/", home);
	else
		return 0;
	if (n < 0 || n >= (int)sizeof(path) - 100)
		return 0;
	snprintf(path + n, sizeof(path) - (size_t)n, "%lx-%lx-%lx-%llx.txt", (unsigned long)st.st_dev,
		 (unsigned long)st.st_ino, (unsigned long)st.st_size,
		 (unsigned long long)st.st_mtim.tv_sec * 1000000000ULL +
			 (unsigned long long)st.st_mtim.tv_nsec);
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		uint64_t site = base + strtoull(line, NULL, 16);
		if (api_patch_text(site, (const uint8_t *)"\x0f\x0b", 2) == 0)
			api_add_patched(site);
	}
	fclose(f);
	return 1;
}

static int add_object(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	(void)data;
	/* The main program (empty name) only: the runtime reads its text from /proc/self/exe. */
	if (info->dlpi_name && !info->dlpi_name[0]) {
		if (!patch_from_cache(info->dlpi_addr) && sgxemu_py_ensure()) {
			if (verbose >= 2)
				sgxemu_log("runtime started");
			sgxemu_py_call("patch_cpuid", "(yK)", "/proc/self/exe",
				       (unsigned long long)info->dlpi_addr);
		}
		return 1;
	}
	return 0;
}

static void atfork_prepare(void)
{
	sgxemu_py_atfork_prepare();
}

static void atfork_parent(void)
{
	sgxemu_py_atfork_parent();
}

static void atfork_child(void)
{
	struct thread_rec *r, *next;

	/* Only this thread exists in the child. */
	pthread_mutex_init(&rec_lock, NULL);
	pthread_mutex_init(&watch_lock, NULL);
	pthread_cond_init(&watch_cond, NULL);
	for (r = recs; r; r = next) {
		next = r->next;
		if (r != my_rec)
			free(r);
	}
	recs = my_rec;
	if (my_rec) {
		my_rec->next = NULL;
		my_rec->tid = (pid_t)syscall(SYS_gettid);
		atomic_store(&my_rec->inside, 0);
	}
	atomic_store(&inside_count, 0);
	watcher_started = 0;
	sgxemu_py_atfork_child();
}

__attribute__((constructor)) static void sgxemu_preload_init(void)
{
	const char *v = getenv("SGXEMU_VERBOSE");
	const char *mode = getenv("SGXEMU_CPUID");

	clock_gettime(CLOCK_MONOTONIC, &t_start);
	verbose = v && *v ? atoi(v) : 0;
	v = getenv("SGXEMU_DISABLE");
	if (v && *v && *v != '0')
		return;
	if (is_python_host()) {
		if (verbose)
			sgxemu_log("the host program is a Python interpreter: preload inactive");
		return;
	}
	active = 1;
	sgxemu_api_table.vdso_enclu = (uint64_t)(uintptr_t)sgxemu_vdso_enclu;
	sgxemu_api_table.vdso_fixup = (uint64_t)(uintptr_t)sgxemu_vdso_fixup;
	if (((const uint8_t *)sgxemu_vdso_enclu)[0] != 0xeb)
		sgxemu_die("the emulated ENCLU is not a short jump (build problem)");
	get_getauxval();
	get_sigaction();
	install_trap(SIGILL);
	install_trap(SIGSEGV);
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);

	if (!mode || !*mode)
		mode = "auto";
	if (strcmp(mode, "off")) {
		if (strcmp(mode, "patch") && !syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0)) {
			cpuid_mode = 1;
		} else if (strcmp(mode, "fault")) {
			cpuid_mode = 2;
		} else {
			sgxemu_log("SGXEMU_CPUID=fault but the kernel refuses CPUID faulting: "
				   "CPUID is not emulated");
		}
	}
	sgxemu_api_table.cpuid_mode = (uint64_t)cpuid_mode;
	if (cpuid_mode == 2) {
		/* Now: the program may run CPUID before any SGX call. From the cache when it knows
		 * the program, else the runtime starts and scans it. */
		dl_iterate_phdr(add_object, NULL);
	}
	if (verbose)
		sgxemu_log("preload active (cpuid: %s)",
			   cpuid_mode == 1 ? "faulting" : cpuid_mode == 2 ? "patched" : "not emulated");
}
