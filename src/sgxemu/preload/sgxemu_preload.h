/*
 * sgxemu preload library: declarations shared by the interposers (sgxemu_preload.c), the
 * embedded-CPython bridge (sgxemu_python.c) and the vDSO stand-in (sgxemu_vdso.S).
 *
 * The register block and the API table are read by sgxemu/preload/runtime.py through ctypes:
 * offsets here and there must agree (runtime.py checks SGXEMU_ABI_VERSION).
 */
#ifndef SGXEMU_PRELOAD_H
#define SGXEMU_PRELOAD_H

#ifndef __ASSEMBLER__
#include <stddef.h>
#include <stdint.h>
#endif

#define SGXEMU_ABI_VERSION 4

/* struct sgxemu_block offsets (bytes), also used by the assembly. */
#define B_RAX 0
#define B_RCX 8
#define B_RDX 16
#define B_RBX 24
#define B_RSP 32
#define B_RBP 40
#define B_RSI 48
#define B_RDI 56
#define B_R8 64
#define B_R9 72
#define B_R10 80
#define B_R11 88
#define B_R12 96
#define B_R13 104
#define B_R14 112
#define B_R15 120
#define B_RFLAGS 128
#define B_RIP 136
#define B_STACK 144
#define B_ACTION 152
#define B_SIGNO 160
#define B_SICODE 168
#define B_SIADDR 176
#define B_XSTATE 184
#define B_FX 192
#define B_SIZE 704

#ifndef __ASSEMBLER__

/* What the emulation asks the caller to do once it returns (block.action). */
enum sgxemu_action {
	SGXEMU_RESUME = 0,	/* load the registers of the block and continue at RIP */
	SGXEMU_SIGNAL = 1,	/* the same, with signal SIGNO (SICODE, SIADDR) delivered there */
};

/*
 * One per thread (initial-exec TLS). The GPRs are in sgxemu's `Reg` order (the GPRSGX order,
 * then RFLAGS and RIP); FX is an FXSAVE64 image of the x87/SSE state.
 */
struct sgxemu_block {
	uint64_t gpr[18];
	uint64_t stack_top;	/* this thread's private emulation stack (0: not yet made) */
	uint64_t action;
	uint64_t signo;
	uint64_t sig_code;
	uint64_t sig_addr;
	uint64_t xstate;	/* set by the emulation when FX was replaced */
	uint8_t fx[512] __attribute__((aligned(64)));
} __attribute__((aligned(64)));

_Static_assert(offsetof(struct sgxemu_block, stack_top) == B_STACK, "block layout");
_Static_assert(offsetof(struct sgxemu_block, xstate) == B_XSTATE, "block layout");
_Static_assert(offsetof(struct sgxemu_block, fx) == B_FX, "block layout");
_Static_assert(sizeof(struct sgxemu_block) == B_SIZE, "block layout");

#define SGXEMU_MAX_CPUID 24

/* One CPUID answer the emulated machine gives (leaf 0x12 subleaves, and leaf 7's SGX bits). */
struct sgxemu_cpuid_entry {
	uint32_t leaf, subleaf;
	uint32_t regs[4];	/* EAX EBX ECX EDX */
	uint32_t mask[4];	/* bits taken from regs; the others come from the host CPU */
};

/*
 * Everything Python may call back, as plain C function pointers plus constants. Its address
 * is handed to runtime.bootstrap(); runtime.py declares the same layout with ctypes.
 */
struct sgxemu_api {
	uint64_t abi_version;
	uint64_t vdso_enclu;	/* the emulated ENCLU of __vdso_sgx_enter_enclave (and its AEP) */
	uint64_t vdso_fixup;	/* the vDSO's exception fixup target */
	uint64_t vdso_base;	/* the in-memory vDSO image */
	uint64_t cpuid_mode;	/* 0 none, 1 CPUID faulting, 2 patched to UD2 */
	void *(*host_mmap)(void *addr, size_t len, int prot, int flags, int fd, long off);
	long (*host_munmap)(void *addr, size_t len);
	long (*host_mprotect)(void *addr, size_t len, int prot);
	void (*set_ranges)(const uint64_t *pairs, uint64_t n);
	void (*set_cpuid)(const struct sgxemu_cpuid_entry *entries, uint64_t n);
	void (*set_engine)(uint64_t uc_handle);	/* the calling thread's Unicorn instance */
	uint64_t (*take_signal_exit)(void);	/* the watcher saw a signal for this thread */
	long (*patch_text)(uint64_t addr, const uint8_t *bytes, uint64_t n);
	void (*add_patched)(uint64_t addr);	/* a CPUID now reading UD2 */
	uint64_t (*uc_emu_stop)(uint64_t uc_handle);	/* set by Python: Unicorn's function */
	uint64_t (*block_address)(void);	/* this thread's struct sgxemu_block */
	uint64_t host_generation;	/* bumped by every host mmap/munmap/mprotect/mremap seen */
};

/* sgxemu_python.c */
int sgxemu_py_ensure(void);
int sgxemu_py_call_enclu(struct sgxemu_block *b);
long sgxemu_py_call(const char *method, const char *fmt, ...);
int sgxemu_py_active(void);
void sgxemu_py_atfork_prepare(void);
void sgxemu_py_atfork_parent(void);
void sgxemu_py_atfork_child(void);

/* sgxemu_preload.c */
extern struct sgxemu_api sgxemu_api_table;
int sgxemu_cpuid_faulting(int on);	/* this thread; returns whether it was on */
void sgxemu_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sgxemu_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* sgxemu_vdso.S */
extern char sgxemu_vdso_enter[];
extern char sgxemu_vdso_enclu[];
extern char sgxemu_vdso_fixup[];
long sgxemu_call_on_stack(long (*fn)(void *), void *arg, void *stack_top);
struct sgxemu_block *sgxemu_enclu_entry(struct sgxemu_block *b);
void sgxemu_alloc_stack(struct sgxemu_block *b);

#endif /* __ASSEMBLER__ */
#endif /* SGXEMU_PRELOAD_H */
