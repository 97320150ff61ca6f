/*
 * __vdso_sgx_enter_enclave for hosts running under sgxemu, written from the kernel's documented
 * ABI (Documentation/x86/sgx.rst, uapi <asm/sgx.h>): the same calling convention, the same
 * struct sgx_enclave_run handling, the same user handler protocol and the same register state
 * on return. The one ENCLU (EENTER point and AEP at once) is a short jump to the emulation
 * trampoline, padded to ENCLU's three bytes, so EEXIT to "the instruction after ENCLU" lands
 * where it would on hardware.
 *
 *   rdi, rsi, rdx, r8, r9	passed through to the enclave
 *   ecx			the leaf: EENTER (2) or ERESUME (3)
 *   8(%rsp) at entry		struct sgx_enclave_run *
 *
 * Returns 0 once ENCLU was attempted (run->function says how it ended), -EINVAL for a bad leaf
 * or non-zero reserved bytes, or a user handler's value <= 0.
 */
#include "sgxemu_preload.h"

#define EENTER		2
#define ERESUME		3
#define EEXIT		4
#define RUN_TCS		0
#define RUN_FUNCTION	8
#define RUN_VECTOR	12
#define RUN_ERROR	14
#define RUN_ADDR	16
#define RUN_HANDLER	24
#define RUN_RESERVED	40
#define RUN_SIZE	256
#define RUN_ARG		16	/* the run pointer relative to %rbp */

	.text

/* Reached from the emulated ENCLU by a two-byte jump: must stay within 127 bytes of it. */
	.p2align 4
.Ltramp_near:
	jmp	sgxemu_tramp

	.globl	sgxemu_vdso_enter
	.hidden	sgxemu_vdso_enter
	.type	sgxemu_vdso_enter, @function
sgxemu_vdso_enter:
	.cfi_startproc
	push	%rbp
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %rbp, 0
	mov	%rsp, %rbp
	.cfi_def_cfa_register %rbp
	push	%rbx
	.cfi_rel_offset %rbx, -8
.Lenter:
	cmp	$EENTER, %ecx
	jb	.Linvalid
	cmp	$ERESUME, %ecx
	ja	.Linvalid
	mov	RUN_ARG(%rbp), %rax
	mov	$RUN_RESERVED, %rbx
1:	cmpq	$0, (%rax, %rbx)
	jne	.Linvalid
	add	$8, %rbx
	cmp	$RUN_SIZE, %rbx
	jne	1b
	mov	RUN_TCS(%rax), %rbx
	mov	%ecx, %eax
	lea	sgxemu_vdso_enclu(%rip), %rcx		/* the AEP is this ENCLU */
	.globl	sgxemu_vdso_enclu
	.hidden	sgxemu_vdso_enclu
sgxemu_vdso_enclu:
	.byte	0xeb, .Ltramp_near - (sgxemu_vdso_enclu + 2)
	.byte	0x90
	/* EEXIT to the instruction after ENCLU lands here. */
	mov	RUN_ARG(%rbp), %rbx
	movl	$EEXIT, RUN_FUNCTION(%rbx)
.Lhandle_exit:
	cmpq	$0, RUN_HANDLER(%rbx)
	jne	.Lhandler
	xor	%eax, %eax
.Lout:
	pop	%rbx
	leave
	.cfi_def_cfa %rsp, 8
	ret
	.cfi_def_cfa %rbp, 16
.Linvalid:
	mov	$-22, %eax				/* -EINVAL */
	jmp	.Lout

	/* The kernel's exception fixup: trap number, error code and address in RDI/RSI/RDX. */
	.globl	sgxemu_vdso_fixup
	.hidden	sgxemu_vdso_fixup
sgxemu_vdso_fixup:
	mov	RUN_ARG(%rbp), %rbx
	mov	%eax, RUN_FUNCTION(%rbx)
	mov	%di, RUN_VECTOR(%rbx)
	mov	%si, RUN_ERROR(%rbx)
	mov	%rdx, RUN_ADDR(%rbx)
	jmp	.Lhandle_exit

.Lhandler:
	mov	%rsp, %rcx				/* the untrusted RSP at exit */
	mov	%rbx, %rax
	mov	%rsp, %rbx
	and	$0xf, %rbx				/* what the alignment below removes */
	and	$-0x10, %rsp
	push	%rax					/* keeps the call 16-byte aligned */
	push	%rax					/* the run struct: 7th argument */
	cld
	mov	RUN_HANDLER(%rax), %rax
	call	*%rax
	lea	0x10(%rsp, %rbx), %rsp
	cmp	$0, %eax
	jle	.Lout
	mov	%eax, %ecx				/* > 0: the next leaf */
	jmp	.Lenter
	.cfi_endproc
	.size	sgxemu_vdso_enter, . - sgxemu_vdso_enter

/*
 * The emulation trampoline: capture every register into this thread's block, switch to the
 * thread's private stack (enclave code may write below the untrusted RSP, and the emulator
 * must not live there), run the emulation, then load the resulting register file and
 * continue at its RIP. The 8 bytes below the target RSP receive the return address.
 */
	.p2align 4
	.type	sgxemu_tramp, @function
sgxemu_tramp:
	pushfq
	push	%rax
	mov	sgxemu_tls_block@gottpoff(%rip), %rax
	add	%fs:0, %rax
	mov	%rcx, B_RCX(%rax)
	mov	%rdx, B_RDX(%rax)
	mov	%rbx, B_RBX(%rax)
	mov	%rbp, B_RBP(%rax)
	mov	%rsi, B_RSI(%rax)
	mov	%rdi, B_RDI(%rax)
	mov	%r8, B_R8(%rax)
	mov	%r9, B_R9(%rax)
	mov	%r10, B_R10(%rax)
	mov	%r11, B_R11(%rax)
	mov	%r12, B_R12(%rax)
	mov	%r13, B_R13(%rax)
	mov	%r14, B_R14(%rax)
	mov	%r15, B_R15(%rax)
	pop	%rcx
	mov	%rcx, B_RAX(%rax)
	pop	%rcx
	mov	%rcx, B_RFLAGS(%rax)
	mov	%rsp, B_RSP(%rax)
	lea	sgxemu_vdso_enclu(%rip), %rcx
	mov	%rcx, B_RIP(%rax)
	fxsave64 B_FX(%rax)
	mov	%rax, %rbx				/* callee-saved from here on */
	cmpq	$0, B_STACK(%rbx)
	jne	2f
	lea	-256(%rsp), %rsp			/* first use: borrow the host stack to make one */
	and	$-16, %rsp
	mov	%rbx, %rdi
	cld
	call	sgxemu_alloc_stack
2:	mov	B_STACK(%rbx), %rsp
	mov	%rbx, %rdi
	cld
	call	sgxemu_enclu_entry
	fxrstor64 B_FX(%rax)
	mov	B_RSP(%rax), %rcx
	mov	B_RIP(%rax), %rdx
	mov	%rdx, -8(%rcx)
	pushq	B_RFLAGS(%rax)
	popfq
	mov	B_RCX(%rax), %rcx
	mov	B_RDX(%rax), %rdx
	mov	B_RBX(%rax), %rbx
	mov	B_RBP(%rax), %rbp
	mov	B_RSI(%rax), %rsi
	mov	B_RDI(%rax), %rdi
	mov	B_R8(%rax), %r8
	mov	B_R9(%rax), %r9
	mov	B_R10(%rax), %r10
	mov	B_R11(%rax), %r11
	mov	B_R12(%rax), %r12
	mov	B_R13(%rax), %r13
	mov	B_R14(%rax), %r14
	mov	B_R15(%rax), %r15
	mov	B_RSP(%rax), %rsp
	lea	-8(%rsp), %rsp				/* lea: RFLAGS are already final */
	mov	B_RAX(%rax), %rax
	ret
	.size	sgxemu_tramp, . - sgxemu_tramp

/* long sgxemu_call_on_stack(long (*fn)(void *), void *arg, void *stack_top) */
	.globl	sgxemu_call_on_stack
	.hidden	sgxemu_call_on_stack
	.type	sgxemu_call_on_stack, @function
sgxemu_call_on_stack:
	push	%rbp
	mov	%rsp, %rbp
	and	$-16, %rdx
	mov	%rdx, %rsp
	mov	%rdi, %rax
	mov	%rsi, %rdi
	call	*%rax
	leave
	ret
	.size	sgxemu_call_on_stack, . - sgxemu_call_on_stack

	.section .note.GNU-stack, "", @progbits
