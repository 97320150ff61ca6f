/*
 * A plain SGX host program (libc and <asm/sgx.h> only), used to test sgxemu's preload library:
 * it builds the project's test enclave the way the kernel selftest's loader does (ELF segments,
 * CREATE, ADD_PAGES, INIT with a SIGSTRUCT read from a file, MAP_SHARED|MAP_FIXED mappings),
 * finds __vdso_sgx_enter_enclave through getauxval(AT_SYSINFO_EHDR), and runs scenarios, one
 * result line each. Nothing in it knows about sgxemu.
 *
 *   host ENCL.ELF SIGSTRUCT.BIN [SCENARIO...]     run scenarios (default: all)
 *   host ENCL.ELF SIGSTRUCT.BIN --bench N         N EENTER->EEXIT round trips: "bench ns_per_call=..."
 *   host ENCL.ELF SIGSTRUCT.BIN --signals N       2N calls under a 1 ms SIGALRM timer
 *   host ENCL.ELF SIGSTRUCT.BIN --tcs-busy N      two threads, N calls each, on one TCS
 *   host ENCL.ELF SIGSTRUCT.BIN --direct-fault    ENCLU by host code that faults: SIGSEGV
 *   host --open                                   open /dev/sgx_enclave and exit
 */
#define _GNU_SOURCE
#include <asm/sgx.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#define PAGE 4096UL
#define EENTER 2
#define ERESUME 3
#define EEXIT 4
#define PAGE_TYPE_TCS 1
#define PAGE_TYPE_REG 2
#define PAGE_TYPE_TRIM 4
#define SECINFO_R 0x1
#define SECINFO_W 0x2
#define SECINFO_X 0x4
#define MAGIC 0x1122334455667788UL
#define MAGIC2 0x8877665544332211UL

enum { OP_PUT_BUF, OP_GET_BUF, OP_PUT_ADDR, OP_GET_ADDR, OP_NOP, OP_EACCEPT, OP_EMODPE };

struct op_buf { uint64_t type, value; };
struct op_addr { uint64_t type, value, addr; };
struct op_eaccept { uint64_t type, epc_addr, flags, ret; };
struct op_emodpe { uint64_t type, epc_addr, flags; };

struct secinfo { uint64_t flags; uint8_t reserved[56]; } __attribute__((aligned(64)));

struct segment {
	uint64_t offset, size;
	int prot;
	uint64_t flags;
	int measure;
	void *src;
};

struct encl {
	int fd;
	void *bin;
	size_t bin_size;
	struct segment seg[8];
	int nseg;
	uint64_t src_size, size, base;
	uint64_t data_offset;	/* first RW segment after the TCS one */
};

typedef int (*vdso_enter_t)(unsigned long, unsigned long, unsigned long, unsigned int,
			    unsigned long, unsigned long, struct sgx_enclave_run *);
static vdso_enter_t vdso_enter;

static void die(const char *what)
{
	fprintf(stderr, "host: %s: %s\n", what, strerror(errno));
	exit(2);
}

/* -- the vDSO, looked up both ways ---------------------------------------------------------- */
static unsigned long elf_hash(const char *name)
{
	unsigned long h = 0, g;

	while (*name) {
		h = (h << 4) + (unsigned char)*name++;
		g = h & 0xf0000000;
		if (g)
			h ^= g >> 24;
		h &= ~g;
	}
	return h;
}

static void *vdso_by_hash(uint8_t *base, const char *name)
{
	Elf64_Ehdr *eh = (Elf64_Ehdr *)base;
	Elf64_Phdr *ph = (Elf64_Phdr *)(base + eh->e_phoff);
	Elf64_Dyn *dyn = NULL;
	Elf64_Sym *sym = NULL;
	const char *str = NULL;
	uint32_t *hash = NULL;

	for (int i = 0; i < eh->e_phnum; i++)
		if (ph[i].p_type == PT_DYNAMIC)
			dyn = (Elf64_Dyn *)(base + ph[i].p_offset);
	if (!dyn)
		return NULL;
	for (; dyn->d_tag != DT_NULL; dyn++) {
		if (dyn->d_tag == DT_SYMTAB)
			sym = (Elf64_Sym *)(base + dyn->d_un.d_ptr);
		if (dyn->d_tag == DT_STRTAB)
			str = (const char *)(base + dyn->d_un.d_ptr);
		if (dyn->d_tag == DT_HASH)
			hash = (uint32_t *)(base + dyn->d_un.d_ptr);
	}
	if (!sym || !str || !hash)
		return NULL;
	uint32_t nbucket = hash[0], *bucket = hash + 2, *chain = hash + 2 + nbucket;
	for (uint32_t i = bucket[elf_hash(name) % nbucket]; i; i = chain[i])
		if (!strcmp(str + sym[i].st_name, name))
			return base + sym[i].st_value;
	return NULL;
}

static void *vdso_by_sections(uint8_t *base, const char *name)
{
	Elf64_Ehdr *eh = (Elf64_Ehdr *)base;
	Elf64_Shdr *sh = (Elf64_Shdr *)(base + eh->e_shoff);
	const char *shstr = (const char *)(base + sh[eh->e_shstrndx].sh_offset);
	Elf64_Shdr *dynsym = NULL, *dynstr = NULL;

	for (int i = 0; i < eh->e_shnum; i++) {
		if (!strcmp(shstr + sh[i].sh_name, ".dynsym"))
			dynsym = &sh[i];
		if (!strcmp(shstr + sh[i].sh_name, ".dynstr"))
			dynstr = &sh[i];
	}
	if (!dynsym || !dynstr)
		return NULL;
	Elf64_Sym *sym = (Elf64_Sym *)(base + dynsym->sh_offset);
	const char *str = (const char *)(base + dynstr->sh_offset);
	for (size_t i = 0; i < dynsym->sh_size / sizeof(Elf64_Sym); i++)
		if (sym[i].st_name && !strcmp(str + sym[i].st_name, name))
			return base + sym[i].st_value;
	return NULL;
}

/* -- loading (the selftest loader's rules) ---------------------------------------------------- */
static uint64_t round_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) & ~(a - 1);
}

static void encl_load(struct encl *e, const char *path, uint64_t heap_size)
{
	struct stat st;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &st))
		die(path);
	e->bin = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (e->bin == MAP_FAILED)
		die("mmap enclave file");
	e->bin_size = (size_t)st.st_size;
	close(fd);

	Elf64_Ehdr *eh = e->bin;
	Elf64_Phdr *ph = (Elf64_Phdr *)((uint8_t *)e->bin + eh->e_phoff);
	uint64_t src_offset = 0;
	e->nseg = 0;
	for (int i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_type != PT_LOAD)
			continue;
		struct segment *s = &e->seg[e->nseg];
		int flags = (int)ph[i].p_flags;
		if (e->nseg == 0) {
			if (flags != (PF_R | PF_W)) {
				fprintf(stderr, "host: TCS segment must be RW\n");
				exit(2);
			}
			src_offset = ph[i].p_offset & ~(PAGE - 1);
			s->prot = PROT_READ | PROT_WRITE;
			s->flags = (uint64_t)PAGE_TYPE_TCS << 8;
		} else {
			s->prot = ((flags & PF_R) ? PROT_READ : 0) | ((flags & PF_W) ? PROT_WRITE : 0) |
				  ((flags & PF_X) ? PROT_EXEC : 0);
			s->flags = ((uint64_t)PAGE_TYPE_REG << 8) | (uint64_t)s->prot;
		}
		s->offset = (ph[i].p_offset & ~(PAGE - 1)) - src_offset;
		s->size = round_up(ph[i].p_filesz, PAGE);
		s->src = (uint8_t *)e->bin + src_offset + s->offset;
		s->measure = 1;
		if (e->nseg > 0 && !e->data_offset && s->prot == (PROT_READ | PROT_WRITE))
			e->data_offset = s->offset;
		e->nseg++;
	}
	struct segment *last = &e->seg[e->nseg - 1], *heap = &e->seg[e->nseg];
	heap->offset = last->offset + last->size;
	heap->size = heap_size;
	heap->prot = PROT_READ | PROT_WRITE;
	heap->flags = ((uint64_t)PAGE_TYPE_REG << 8) | SECINFO_R | SECINFO_W;
	heap->measure = 0;
	heap->src = mmap(NULL, heap_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (heap->src == MAP_FAILED)
		die("mmap heap");
	e->nseg++;
	e->src_size = heap->offset + heap->size;
	for (e->size = PAGE; e->size < e->src_size; e->size <<= 1)
		;
}

static void encl_build(struct encl *e, const char *sigstruct_path)
{
	static uint8_t secs[4096] __attribute__((aligned(4096)));
	static uint8_t sigstruct[1808];
	struct secinfo si __attribute__((aligned(64)));
	struct stat st;
	void *p;

	e->fd = open("/dev/sgx_enclave", O_RDWR);
	if (e->fd < 0)
		die("open /dev/sgx_enclave");
	if (stat("/dev/sgx_enclave", &st) || !S_ISCHR(st.st_mode)) {
		fprintf(stderr, "host: /dev/sgx_enclave is not a character device\n");
		exit(2);
	}
	/* Probes: the device can be mapped before CREATE (and /dev is not noexec). */
	p = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, e->fd, 0);
	if (p == MAP_FAILED)
		die("probe mmap PROT_READ");
	munmap(p, PAGE);
	p = mmap(NULL, PAGE, PROT_EXEC, MAP_SHARED, e->fd, 0);
	if (p == MAP_FAILED)
		die("probe mmap PROT_EXEC");
	munmap(p, PAGE);

	/* A naturally aligned ELRANGE, carved from a reservation twice its size. */
	uint8_t *area = mmap(NULL, 2 * e->size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED)
		die("reserve ELRANGE");
	e->base = round_up((uint64_t)area, e->size);
	if (e->base > (uint64_t)area)
		munmap(area, e->base - (uint64_t)area);
	if ((uint64_t)area + 2 * e->size > e->base + e->size)
		munmap((void *)(e->base + e->size), (uint64_t)area + 2 * e->size - (e->base + e->size));

	memset(secs, 0, sizeof(secs));
	memcpy(secs + 0, &e->size, 8);
	memcpy(secs + 8, &e->base, 8);
	uint32_t ssa_frame_size = 1;
	memcpy(secs + 16, &ssa_frame_size, 4);
	uint64_t attributes = 4, xfrm = 3;	/* MODE64BIT; x87 and SSE */
	memcpy(secs + 48, &attributes, 8);
	memcpy(secs + 56, &xfrm, 8);
	struct sgx_enclave_create create = { .src = (uint64_t)secs };
	if (ioctl(e->fd, SGX_IOC_ENCLAVE_CREATE, &create))
		die("SGX_IOC_ENCLAVE_CREATE");

	for (int i = 0; i < e->nseg; i++) {
		struct segment *s = &e->seg[i];
		memset(&si, 0, sizeof(si));
		si.flags = s->flags;
		struct sgx_enclave_add_pages add = {
			.src = (uint64_t)s->src, .offset = s->offset, .length = s->size,
			.secinfo = (uint64_t)&si, .flags = s->measure ? SGX_PAGE_MEASURE : 0,
		};
		if (ioctl(e->fd, SGX_IOC_ENCLAVE_ADD_PAGES, &add) || add.count != s->size)
			die("SGX_IOC_ENCLAVE_ADD_PAGES");
	}

	int fd = open(sigstruct_path, O_RDONLY);
	if (fd < 0 || read(fd, sigstruct, sizeof(sigstruct)) != (ssize_t)sizeof(sigstruct))
		die(sigstruct_path);
	close(fd);
	struct sgx_enclave_init init = { .sigstruct = (uint64_t)sigstruct };
	if (ioctl(e->fd, SGX_IOC_ENCLAVE_INIT, &init))
		die("SGX_IOC_ENCLAVE_INIT");

	for (int i = 0; i < e->nseg; i++) {
		struct segment *s = &e->seg[i];
		p = mmap((void *)(e->base + s->offset), s->size, s->prot, MAP_SHARED | MAP_FIXED, e->fd, 0);
		if (p == MAP_FAILED)
			die("mmap segment");
	}
}

/* -- calls ------------------------------------------------------------------------------------ */
static struct encl E;
static uint64_t D;	/* the second encl_buffer page */
static uint64_t T;	/* total size of the loaded image, heap included */

/* Called through this wrapper the enclave may clobber every callee-saved register. */
extern int unclobbered_enter(unsigned long rdi, unsigned long rsi, unsigned long rdx,
			     unsigned int function, unsigned long r8, unsigned long r9,
			     struct sgx_enclave_run *run, vdso_enter_t fn);
__asm__(".text\n"
	".globl unclobbered_enter\n"
	"unclobbered_enter:\n"
	"	push %rbp\n	mov %rsp, %rbp\n"
	"	push %rbx\n	push %r12\n	push %r13\n	push %r14\n	push %r15\n"
	"	sub $8, %rsp\n"
	"	mov 24(%rbp), %rax\n"	/* fn */
	"	pushq 16(%rbp)\n"	/* run */
	"	call *%rax\n"
	"	add $16, %rsp\n"
	"	pop %r15\n	pop %r14\n	pop %r13\n	pop %r12\n	pop %rbx\n"
	"	pop %rbp\n	ret\n");

/* ENCLU[EENTER] executed by host code itself (no vDSO), AEP = the ENCLU. */
extern uint64_t direct_eenter(void *op, uint64_t tcs);
__asm__(".text\n"
	".globl direct_eenter\n"
	"direct_eenter:\n"
	"	push %rbp\n	mov %rsp, %rbp\n"
	"	push %rbx\n	push %r12\n	push %r13\n	push %r14\n	push %r15\n"
	"	sub $8, %rsp\n"
	"	mov %rsi, %rbx\n"
	"	mov $2, %eax\n"
	"	lea 1f(%rip), %rcx\n"
	"1:	.byte 0x0f, 0x01, 0xd7\n"
	"	add $8, %rsp\n"
	"	pop %r15\n	pop %r14\n	pop %r13\n	pop %r12\n	pop %rbx\n"
	"	pop %rbp\n	ret\n");

/*
 * After an AEX the registers are synthetic (R12-R15 zero): save them around the vDSO. And an
 * ERESUME after a reported AEX returns through the vDSO frame of the *faulting* call (the
 * enclave restores that call's RSP and RBP), so every call is made from the same stack depth:
 * these helpers are never inlined and take no stack arguments.
 */
static __attribute__((noinline)) int call(void *op, struct sgx_enclave_run *run, unsigned leaf)
{
	return unclobbered_enter((unsigned long)op, 0, 0, leaf, 0, 0, run, vdso_enter);
}

static void clear_exc(struct sgx_enclave_run *run)
{
	run->exception_vector = 0;
	run->exception_error_code = 0;
	run->exception_addr = 0;
}

static __attribute__((noinline)) uint64_t put(struct sgx_enclave_run *run, uint64_t addr, uint64_t value, unsigned leaf,
		    int *ret)
{
	struct op_addr op = { OP_PUT_ADDR, value, addr };
	*ret = call(&op, run, leaf);
	return op.value;
}

static __attribute__((noinline)) uint64_t get(struct sgx_enclave_run *run, uint64_t addr, int *ret)
{
	struct op_addr op = { OP_GET_ADDR, 0, addr };
	*ret = call(&op, run, EENTER);
	return op.value;
}

static __attribute__((noinline)) int64_t eaccept(struct sgx_enclave_run *run, uint64_t addr, uint64_t flags, int *ret)
{
	struct op_eaccept op = { OP_EACCEPT, addr, flags, 0 };
	*ret = call(&op, run, EENTER);
	return (int64_t)op.ret;
}

static void print_exc(const char *what, struct sgx_enclave_run *run)
{
	printf(" %s=%u:%u:%#x:%s", what, run->function, run->exception_vector,
	       run->exception_error_code,
	       run->exception_addr ? (run->exception_addr >= E.base && run->exception_addr < E.base + E.size
					      ? "encl" : "host") : "0");
}

static void print_exc_off(const char *what, struct sgx_enclave_run *run)
{
	printf(" %s=%u:%u:%#x:%#lx", what, run->function, run->exception_vector,
	       run->exception_error_code,
	       run->exception_addr ? (unsigned long)(run->exception_addr - E.base) : 0UL);
}

static void new_run(struct sgx_enclave_run *run)
{
	memset(run, 0, sizeof(*run));
	run->tcs = E.base;
}

static unsigned cpuid_eax(unsigned leaf, unsigned sub, unsigned out[4])
{
	__asm__ volatile("cpuid" : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3])
			 : "a"(leaf), "c"(sub));
	return out[0];
}

static int sgx2;

static void s_cpuid(void)
{
	unsigned r[4];
	uint64_t epc = 0;

	cpuid_eax(7, 0, r);
	int sgx = (r[1] >> 2) & 1, lc = (r[2] >> 30) & 1;
	cpuid_eax(0x12, 0, r);
	sgx2 = (r[0] >> 1) & 1;
	printf("cpuid sgx=%d lc=%d sgx1=%u sgx2=%d", sgx, lc, r[0] & 1, sgx2);
	for (unsigned sub = 2; sub < 10; sub++) {
		cpuid_eax(0x12, sub, r);
		if ((r[0] & 0xf) != 1)
			break;
		epc += (r[2] & 0xfffff000UL) + ((uint64_t)(r[3] & 0xfffff) << 32);
	}
	printf(" epc=%#lx\n", (unsigned long)epc);
}

static void s_vdso(void)
{
	uint8_t *base = (uint8_t *)getauxval(AT_SYSINFO_EHDR);
	void *a = base ? vdso_by_hash(base, "__vdso_sgx_enter_enclave") : NULL;
	void *b = base ? vdso_by_sections(base, "__vdso_sgx_enter_enclave") : NULL;

	vdso_enter = (vdso_enter_t)a;
	printf("vdso hash=%d sections=%d same=%d\n", a != NULL, b != NULL, a == b);
	if (!a) {
		fprintf(stderr, "host: no __vdso_sgx_enter_enclave\n");
		exit(3);
	}
}

static void s_unclobbered(void)
{
	struct sgx_enclave_run run;
	struct op_buf put_op = { OP_PUT_BUF, MAGIC }, get_op = { OP_GET_BUF, 0 };

	new_run(&run);
	int r1 = unclobbered_enter((unsigned long)&put_op, 0, 0, EENTER, 0, 0, &run, vdso_enter);
	int f1 = (int)run.function;
	int r2 = unclobbered_enter((unsigned long)&get_op, 0, 0, EENTER, 0, 0, &run, vdso_enter);
	printf("unclobbered_vdso ret=%d,%d function=%d,%u", r1, r2, f1, run.function);
	print_exc("exc", &run);
	printf(" user_data=%#lx value=%#lx\n", (unsigned long)run.user_data,
	       (unsigned long)get_op.value);
}

static void s_clobbered(void)
{
	struct sgx_enclave_run run;
	struct op_buf put_op = { OP_PUT_BUF, MAGIC2 }, get_op = { OP_GET_BUF, 0 };

	new_run(&run);
	int r1 = vdso_enter((unsigned long)&put_op, 0, 0, EENTER, 0, 0, &run);
	int r2 = vdso_enter((unsigned long)&get_op, 0, 0, EENTER, 0, 0, &run);
	printf("clobbered_vdso ret=%d,%d function=%u value=%#lx\n", r1, r2, run.function,
	       (unsigned long)get_op.value);
}

/* The vDSO's own checks: the leaf must be EENTER or ERESUME, the reserved bytes zero. */
static void s_vdso_checks(void)
{
	struct sgx_enclave_run run;
	struct op_buf nop = { OP_NOP, 0 };

	new_run(&run);
	int bad_leaf = call(&nop, &run, EEXIT);
	run.reserved[100] = 1;
	int bad_reserved = call(&nop, &run, EENTER);
	run.reserved[100] = 0;
	int ok = call(&nop, &run, EENTER);
	printf("vdso_checks leaf=%d reserved=%d ok=%d function=%u\n", bad_leaf, bad_reserved, ok,
	       run.function);
}

/* /dev/sgx_provision: a character device whose fd the PROVISION ioctl accepts. */
static void s_provision(void)
{
	struct stat st;
	int pfd = open("/dev/sgx_provision", O_RDONLY);
	int chr = pfd >= 0 && !fstat(pfd, &st) && S_ISCHR(st.st_mode);
	struct sgx_enclave_provision prov = { .fd = (uint64_t)pfd };
	int ret = ioctl(E.fd, SGX_IOC_ENCLAVE_PROVISION, &prov);
	struct sgx_enclave_provision bad = { .fd = 0 };	/* stdin is no provision device */
	int bad_ret = ioctl(E.fd, SGX_IOC_ENCLAVE_PROVISION, &bad);
	int bad_errno = errno;
	void *map = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, pfd, 0);
	int map_errno = errno;
	printf("provision chr=%d ioctl=%d bad=%d,%d mmap=%d,%d\n", chr, ret, bad_ret, bad_errno,
	       map == MAP_FAILED ? -1 : 0, map_errno);
	close(pfd);
}

static int handler_calls;
static long handler_args[5];

static int test_handler(long rdi, long rsi, long rdx, long ursp, long r8, long r9,
			struct sgx_enclave_run *run)
{
	(void)ursp;
	handler_calls++;
	handler_args[0] = rdi;
	handler_args[1] = rsi;
	handler_args[2] = rdx;
	handler_args[3] = r8;
	handler_args[4] = r9;
	run->user_data = 0;
	return 0;
}

static void s_user_handler(void)
{
	struct sgx_enclave_run run;
	struct op_buf put_op = { OP_PUT_BUF, MAGIC }, get_op = { OP_GET_BUF, 0 };

	new_run(&run);
	run.user_handler = (uint64_t)test_handler;
	run.user_data = 0xdeadbeef;
	handler_calls = 0;
	int r1 = call(&put_op, &run, EENTER);
	unsigned long ud1 = (unsigned long)run.user_data;
	run.user_data = 0xdeadbeef;
	int r2 = call(&get_op, &run, EENTER);
	printf("clobbered_vdso_and_user_function ret=%d,%d calls=%d function=%u user_data=%#lx,%#lx "
	       "value=%#lx\n", r1, r2, handler_calls, run.function, ud1,
	       (unsigned long)run.user_data, (unsigned long)get_op.value);
}

static void s_tcs_entry(void)
{
	struct sgx_enclave_run run;
	struct op_buf nop = { OP_NOP, 0 };

	new_run(&run);
	int r1 = call(&nop, &run, EENTER);
	unsigned f1 = run.function;
	run.tcs = E.base + PAGE;
	int r2 = call(&nop, &run, EENTER);
	printf("tcs_entry ret=%d,%d function=%u,%u", r1, r2, f1, run.function);
	print_exc("exc", &run);
	printf("\n");
}

static void s_pte_permissions(void)
{
	struct sgx_enclave_run run;
	int r;

	new_run(&run);
	put(&run, D, MAGIC, EENTER, &r);
	uint64_t v1 = get(&run, D, &r);
	mprotect((void *)D, PAGE, PROT_READ);
	put(&run, D, MAGIC2, EENTER, &r);
	printf("pte_permissions first=%#lx ret=%d", (unsigned long)v1, r);
	print_exc_off("fault", &run);
	clear_exc(&run);
	mprotect((void *)D, PAGE, PROT_READ | PROT_WRITE);
	put(&run, D, MAGIC2, ERESUME, &r);
	printf(" resume=%d,%u", r, run.function);
	uint64_t v2 = get(&run, D, &r);
	print_exc("exc", &run);
	printf(" value=%#lx\n", (unsigned long)v2);
}

/* The user handler sees the #PF, fixes the PTE and asks for ERESUME: an AEX + ERESUME loop. */
static int resume_handler(long rdi, long rsi, long rdx, long ursp, long r8, long r9,
			  struct sgx_enclave_run *run)
{
	(void)rdi; (void)rsi; (void)rdx; (void)ursp; (void)r8; (void)r9;
	handler_calls++;
	if (run->function == ERESUME && run->exception_vector == 14) {
		handler_args[0] = run->exception_error_code;
		mprotect((void *)D, PAGE, PROT_READ | PROT_WRITE);
		clear_exc(run);
		return ERESUME;
	}
	return 0;
}

static void s_aex_eresume(void)
{
	struct sgx_enclave_run run;
	int r;

	new_run(&run);
	mprotect((void *)D, PAGE, PROT_READ);
	run.user_handler = (uint64_t)resume_handler;
	handler_calls = 0;
	handler_args[0] = 0;
	put(&run, D, MAGIC, EENTER, &r);
	run.user_handler = 0;
	uint64_t v = get(&run, D, &r);
	printf("aex_eresume ret=%d calls=%d fault_error=%#lx function=%u value=%#lx\n", r,
	       handler_calls, (unsigned long)handler_args[0], run.function, (unsigned long)v);
}

static const uint64_t ro_constant = 0x0123456789abcdefUL;
static struct op_addr kept_op;	/* an op struct that outlives the call (ERESUME continues it) */

/* The enclave reads and writes host memory directly; host page rights decide its faults. */
static void s_host_memory(void)
{
	struct sgx_enclave_run run;
	volatile uint64_t on_stack = 0;
	int r1, r2, r;
	uint64_t ro_page = (uint64_t)&ro_constant & ~(PAGE - 1);

	new_run(&run);
	put(&run, (uint64_t)&on_stack, MAGIC, EENTER, &r1);
	uint64_t seen = on_stack;
	uint64_t ro = get(&run, (uint64_t)&ro_constant, &r2);
	printf("host_memory write=%#lx read=%#lx ret=%d,%d", (unsigned long)seen, (unsigned long)ro,
	       r1, r2);
	/* A store to a read-only host page: #PF W|U|P; the host makes it writable and resumes. */
	put(&run, (uint64_t)&ro_constant, MAGIC, EENTER, &r);
	printf(" ro=%u:%u:%#x:%d", run.function, run.exception_vector, run.exception_error_code,
	       run.exception_addr == ro_page);
	clear_exc(&run);
	mprotect((void *)ro_page, PAGE, PROT_READ | PROT_WRITE);
	put(&run, (uint64_t)&ro_constant, MAGIC, ERESUME, &r);
	printf(" ro_resume=%u const=%#lx", run.function, (unsigned long)*(volatile uint64_t *)&ro_constant);
	mprotect((void *)ro_page, PAGE, PROT_READ);
	/* A load from an unmapped host page: #PF U; the host maps it and resumes. */
	uint8_t *gone = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	munmap(gone, PAGE);
	new_run(&run);
	run.tcs = E.base + PAGE;
	kept_op = (struct op_addr){ OP_GET_ADDR, 0, (uint64_t)gone + 8 };
	call(&kept_op, &run, EENTER);
	printf(" unmapped=%u:%u:%#x:%d", run.function, run.exception_vector,
	       run.exception_error_code, run.exception_addr == (uint64_t)gone);
	clear_exc(&run);
	if (mmap(gone, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) !=
	    gone)
		die("mmap");
	*(uint64_t *)(gone + 8) = 42;
	call(&kept_op, &run, ERESUME);
	printf(" unmapped_resume=%u value=%#lx\n", run.function, (unsigned long)kept_op.value);
	munmap(gone, PAGE);
}

static void s_direct_enclu(void)
{
	struct op_buf put_op = { OP_PUT_BUF, MAGIC2 }, get_op = { OP_GET_BUF, 0 };

	direct_eenter(&put_op, E.base);
	direct_eenter(&get_op, E.base + PAGE);
	printf("direct_enclu value=%#lx\n", (unsigned long)get_op.value);
}

/* The selftest's probe: a zeroed struct is EINVAL where SGX2 ioctls exist; else their errno. */
static int sgx2_ioctl_errno(void)
{
	struct sgx_enclave_modify_types mt;

	memset(&mt, 0, sizeof(mt));
	if (!ioctl(E.fd, SGX_IOC_ENCLAVE_MODIFY_TYPES, &mt) || errno == EINVAL)
		return 0;
	return errno;
}

static void s_epcm_permissions(void)
{
	struct sgx_enclave_run run;
	int r;

	int err = sgx2_ioctl_errno();
	if (!sgx2 || err) {
		printf("epcm_permissions skipped sgx2=%d errno=%d\n", sgx2, err);
		return;
	}
	new_run(&run);
	put(&run, D, MAGIC, EENTER, &r);
	struct sgx_enclave_restrict_permissions rp = { .offset = E.data_offset + PAGE,
						       .length = PAGE, .permissions = SECINFO_R };
	int ret = ioctl(E.fd, SGX_IOC_ENCLAVE_RESTRICT_PERMISSIONS, &rp);
	int64_t acc = eaccept(&run, D, 0x221, &r);
	printf("epcm_permissions ioctl=%d result=%lu count=%#lx eaccept=%ld", ret,
	       (unsigned long)rp.result, (unsigned long)rp.count, (long)acc);
	put(&run, D, MAGIC2, EENTER, &r);
	print_exc_off("fault", &run);
	clear_exc(&run);
	run.tcs = E.base + PAGE;
	struct op_emodpe mp = { OP_EMODPE, D, SECINFO_R | SECINFO_W };
	int r2 = call(&mp, &run, EENTER);
	run.tcs = E.base;
	put(&run, D, MAGIC2, ERESUME, &r);
	uint64_t v = get(&run, D, &r);
	printf(" emodpe=%d resume=%u value=%#lx\n", r2, run.function, (unsigned long)v);
}

static void s_augment(void)
{
	struct sgx_enclave_run run;
	int r;

	if (!sgx2) {
		printf("augment skipped\n");
		return;
	}
	uint64_t addr = E.base + T;
	void *p = mmap((void *)addr, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_SHARED | MAP_FIXED,
		       E.fd, 0);
	new_run(&run);
	put(&run, addr, MAGIC, EENTER, &r);
	printf("augment map=%d ret=%d", p == (void *)addr, r);
	print_exc_off("fault", &run);
	clear_exc(&run);
	run.tcs = E.base + PAGE;
	int64_t acc = eaccept(&run, addr, 0x20B, &r);
	run.tcs = E.base;
	put(&run, addr, MAGIC, ERESUME, &r);
	unsigned f = run.function;
	uint64_t v = get(&run, addr, &r);
	printf(" eaccept=%ld resume=%u value=%#lx\n", (long)acc, f, (unsigned long)v);
	munmap((void *)addr, PAGE);
}

static void s_trim_remove(void)
{
	struct sgx_enclave_run run;
	int r;

	int err = sgx2_ioctl_errno();
	if (!sgx2 || err) {
		printf("trim_remove skipped sgx2=%d errno=%d\n", sgx2, err);
		return;
	}
	new_run(&run);
	uint64_t page = D;	/* no scenario runs after this one */
	struct sgx_enclave_modify_types mt = { .offset = page - E.base, .length = PAGE,
					       .page_type = PAGE_TYPE_TRIM };
	int m = ioctl(E.fd, SGX_IOC_ENCLAVE_MODIFY_TYPES, &mt);
	struct sgx_enclave_remove_pages early = { .offset = page - E.base, .length = PAGE };
	int e1 = ioctl(E.fd, SGX_IOC_ENCLAVE_REMOVE_PAGES, &early);
	int e1errno = e1 ? errno : 0;
	int64_t acc = eaccept(&run, page, 0x410, &r);
	struct sgx_enclave_remove_pages rp = { .offset = page - E.base, .length = PAGE };
	int rm = ioctl(E.fd, SGX_IOC_ENCLAVE_REMOVE_PAGES, &rp);
	printf("trim_remove modify=%d result=%lu count=%#lx early=%d,%d eaccept=%ld remove=%d,%#lx",
	       m, (unsigned long)mt.result, (unsigned long)mt.count, e1, e1errno, (long)acc, rm,
	       (unsigned long)rp.count);
	/* The page is gone: a load EAUGs a fresh one, pending until the enclave accepts it. */
	kept_op = (struct op_addr){ OP_GET_ADDR, MAGIC, page };
	call(&kept_op, &run, EENTER);
	print_exc_off("after", &run);
	clear_exc(&run);
	run.tcs = E.base + PAGE;
	int64_t acc2 = eaccept(&run, page, 0x20B, &r);
	run.tcs = E.base;
	call(&kept_op, &run, ERESUME);
	printf(" eaccept2=%ld resume=%u value=%#lx\n", (long)acc2, run.function,
	       (unsigned long)kept_op.value);
}

struct thread_arg {
	uint64_t tcs;
	int errors;
	volatile uint64_t slot;
};

static void *thread_body(void *p)
{
	struct thread_arg *a = p;
	struct sgx_enclave_run run;
	int r;

	memset(&run, 0, sizeof(run));
	run.tcs = a->tcs;
	for (int i = 0; i < 40; i++) {
		uint64_t v = MAGIC ^ ((uint64_t)i << 8) ^ a->tcs;
		put(&run, (uint64_t)&a->slot, v, EENTER, &r);
		if (r || run.function != EEXIT || a->slot != v)
			a->errors++;
		if (get(&run, (uint64_t)&a->slot, &r) != v || r)
			a->errors++;
	}
	return NULL;
}

static void s_threads(void)
{
	pthread_t t[2];
	struct thread_arg a[2] = { { E.base, 0, 0 }, { E.base + PAGE, 0, 0 } };

	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, thread_body, &a[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	printf("threads ok=%d errors=%d\n", (a[0].errors == 0) + (a[1].errors == 0),
	       a[0].errors + a[1].errors);
}

/* Two threads on one TCS: an EENTER while the other thread is inside is #GP. */
static long busy_n;
static int busy_counts[3];	/* ok, busy (#GP at EENTER), anything else */
static pthread_mutex_t busy_lock = PTHREAD_MUTEX_INITIALIZER;

static void *busy_body(void *p)
{
	volatile uint64_t slot = 0;
	struct sgx_enclave_run run;
	int r, counts[3] = { 0, 0, 0 };

	(void)p;
	memset(&run, 0, sizeof(run));
	run.tcs = E.base;
	for (long i = 0; i < busy_n; i++) {
		put(&run, (uint64_t)&slot, (uint64_t)i, EENTER, &r);
		if (!r && run.function == EEXIT && slot == (uint64_t)i)
			counts[0]++;
		else if (!r && run.function == EENTER && run.exception_vector == 13)
			counts[1]++;
		else
			counts[2]++;
		clear_exc(&run);
	}
	pthread_mutex_lock(&busy_lock);
	for (int k = 0; k < 3; k++)
		busy_counts[k] += counts[k];
	pthread_mutex_unlock(&busy_lock);
	return NULL;
}

static void tcs_busy(long n)
{
	pthread_t t[2];

	busy_n = n;
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, busy_body, NULL);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	printf("tcs_busy ok=%d busy=%d other=%d\n", busy_counts[0], busy_counts[1], busy_counts[2]);
}

static void s_fork(void)
{
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		struct sgx_enclave_run run;
		struct op_buf get_op = { OP_GET_BUF, 0 };
		new_run(&run);
		int r = call(&get_op, &run, EENTER);
		_exit(r == 0 && run.function == EEXIT ? 0 : 1);
	}
	int status = 0;
	waitpid(pid, &status, 0);
	printf("fork child_status=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128);
}

struct scenario {
	const char *name;
	void (*fn)(void);
};

static const struct scenario scenarios[] = {
	{ "unclobbered_vdso", s_unclobbered },
	{ "clobbered_vdso", s_clobbered },
	{ "clobbered_vdso_and_user_function", s_user_handler },
	{ "tcs_entry", s_tcs_entry },
	{ "vdso_checks", s_vdso_checks },
	{ "provision", s_provision },
	{ "pte_permissions", s_pte_permissions },
	{ "aex_eresume", s_aex_eresume },
	{ "host_memory", s_host_memory },
	{ "direct_enclu", s_direct_enclu },
	{ "epcm_permissions", s_epcm_permissions },
	{ "augment", s_augment },
	{ "threads", s_threads },
	{ "fork", s_fork },
	{ "trim_remove", s_trim_remove },	/* last: it uses D and leaves TCS #1 as it ends */
};

static void bench(long n)
{
	struct sgx_enclave_run run;
	struct op_buf nop = { OP_NOP, 0 };
	struct timespec a, b, ca, cb;

	new_run(&run);
	for (int i = 0; i < 20; i++)
		call(&nop, &run, EENTER);
	clock_gettime(CLOCK_MONOTONIC, &a);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ca);
	for (long i = 0; i < n; i++)
		call(&nop, &run, EENTER);
	clock_gettime(CLOCK_MONOTONIC, &b);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cb);
	double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
	double cpu = (double)(cb.tv_sec - ca.tv_sec) * 1e9 + (double)(cb.tv_nsec - ca.tv_nsec);
	printf("bench ns_per_call=%.0f function=%u cpu_ns_per_call=%.0f\n", ns / (double)n,
	       run.function, cpu / (double)n);
}

/* ENCLU[EENTER] by host code on a page that is no TCS: the EPCM check fails (#PF with the SGX
 * bit), which Linux cannot fix: SIGSEGV (SEGV_ACCERR, si_addr = RBX) at the ENCLU. */
extern char direct_bad_enclu[];
extern void direct_bad_eenter(uint64_t tcs);
__asm__(".text\n"
	".globl direct_bad_eenter\n"
	"direct_bad_eenter:\n"
	"	push %rbx\n"
	"	mov %rdi, %rbx\n"
	"	mov $2, %eax\n"
	"	lea direct_bad_enclu(%rip), %rcx\n"
	".globl direct_bad_enclu\n"
	"direct_bad_enclu:\n"
	"	.byte 0x0f, 0x01, 0xd7\n"
	"	pop %rbx\n"
	"	ret\n");

static sigjmp_buf fault_jmp;
static volatile int fault_sig, fault_code, fault_at_enclu;
static void *volatile fault_addr;

static void on_fault(int sig, siginfo_t *si, void *ctx)
{
	ucontext_t *uc = ctx;

	fault_sig = sig;
	fault_code = si->si_code;
	fault_addr = si->si_addr;
	fault_at_enclu = uc->uc_mcontext.gregs[REG_RIP] == (greg_t)direct_bad_enclu;
	siglongjmp(fault_jmp, 1);
}

static void direct_fault(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_fault;
	sa.sa_flags = SA_SIGINFO;
	sigaction(SIGSEGV, &sa, NULL);
	if (!sigsetjmp(fault_jmp, 1))
		direct_bad_eenter(E.base + 2 * PAGE);	/* the code page */
	printf("direct_fault sig=%d code=%d at_enclu=%d addr=%#lx\n", fault_sig, fault_code,
	       fault_at_enclu, (unsigned long)((uint64_t)fault_addr - E.base));
}

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
}

/* Enclave calls under a 1 ms interval timer: signals land while the emulator runs. */
static void signals(long n)
{
	struct sgx_enclave_run run;
	struct sigaction sa;
	struct itimerval it = { { 0, 1000 }, { 0, 1000 } };
	long ok = 0;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &it, NULL);
	new_run(&run);
	for (long i = 0; i < n; i++) {
		struct op_buf put_op = { OP_PUT_BUF, (uint64_t)i }, get_op = { OP_GET_BUF, 0 };
		int r1 = call(&put_op, &run, EENTER);
		int r2 = call(&get_op, &run, EENTER);
		ok += !r1 && !r2 && run.function == EEXIT && get_op.value == (uint64_t)i;
	}
	memset(&it, 0, sizeof(it));
	setitimer(ITIMER_REAL, &it, NULL);
	printf("signals calls=%ld ok=%ld handled=%d\n", n, ok, alarms > 0);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 2 && !strcmp(argv[1], "--open")) {
		int fd = open("/dev/sgx_enclave", O_RDWR);
		printf("open %s\n", fd >= 0 ? "ok" : strerror(errno));
		return fd >= 0 ? 0 : 1;
	}
	if (argc < 3) {
		fprintf(stderr, "usage: host ENCL.ELF SIGSTRUCT [SCENARIO...|--bench N]\n");
		return 2;
	}
	s_cpuid();
	s_vdso();
	encl_load(&E, argv[1], PAGE);
	encl_build(&E, argv[2]);
	D = E.base + E.data_offset + PAGE;
	T = E.src_size;
	printf("built size=%#lx segments=%d\n", (unsigned long)E.size, E.nseg);
	if (argc == 5 && !strcmp(argv[3], "--bench")) {
		bench(atol(argv[4]));
		return 0;
	}
	if (argc == 4 && !strcmp(argv[3], "--direct-fault")) {
		direct_fault();
		return 0;
	}
	if (argc == 5 && !strcmp(argv[3], "--tcs-busy")) {
		tcs_busy(atol(argv[4]));
		return 0;
	}
	if (argc == 5 && !strcmp(argv[3], "--signals")) {
		signals(atol(argv[4]));
		return 0;
	}
	for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++) {
		int want = argc == 3;
		for (int k = 3; k < argc; k++)
			want |= !strcmp(argv[k], scenarios[i].name);
		if (want)
			scenarios[i].fn();
	}
	munmap((void *)E.base, E.size);
	close(E.fd);
	printf("done\n");
	return 0;
}
