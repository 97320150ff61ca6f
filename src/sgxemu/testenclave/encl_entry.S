/*
 * Entry stubs, SSA frames and stacks of the sgxemu test enclave.
 *
 * On EENTER: RBX = linear address of the TCS, RCX = address after the
 * EENTER (our EEXIT target), RSP = the untrusted stack, RDI/RSI = args.
 * Everything is addressed RIP-relative so no relocation is ever needed.
 */

#define ENCLU	.byte 0x0f, 0x01, 0xd7
#define EEXIT	4
#define PAGE	4096

	.section .text.encl_entry, "ax", @progbits

/* Static TCS n (at offset (n-1)*PAGE) owns stack page n, so the stack top
 * is the first stack's top plus the TCS offset. */
	.globl	encl_entry
	.type	encl_entry, @function
encl_entry:
	lea	__encl_base(%rip), %rdx
	mov	%rbx, %rax
	sub	%rdx, %rax
	lea	encl_stack_tcs1_top(%rip), %rdx
	add	%rdx, %rax
	jmp	.Lentry_common
	.size	encl_entry, . - encl_entry

/* TCS pages made at run time (INIT_TCS_PAGE) use the page just below the
 * TCS as their stack. */
	.globl	encl_dyn_entry
	.type	encl_dyn_entry, @function
encl_dyn_entry:
	lea	-1(%rbx), %rax
	and	$-16, %rax

/* RAX = top of this thread's enclave stack. */
.Lentry_common:
	xchg	%rax, %rsp
	push	%rax			/* untrusted RSP */
	push	%rcx			/* EEXIT target */
	cld				/* the C ABI assumes DF = 0 */
	call	encl_body
	pop	%rbx
	pop	%rax
	mov	%rax, %rsp
	mov	$EEXIT, %eax
	ENCLU
	ud2				/* EEXIT does not return */
	.size	encl_dyn_entry, . - encl_dyn_entry

/* One SSA frame (SECS.SSAFRAMESIZE = 1, NSSA = 1) per static TCS. */
	.section .encl_ssa, "aw", @progbits
	.balign	PAGE
	.globl	encl_ssa_tcs1
	.type	encl_ssa_tcs1, @object
encl_ssa_tcs1:
	.fill	PAGE, 1, 0
	.size	encl_ssa_tcs1, PAGE
	.globl	encl_ssa_tcs2
	.type	encl_ssa_tcs2, @object
encl_ssa_tcs2:
	.fill	PAGE, 1, 0
	.size	encl_ssa_tcs2, PAGE

/* One stack page per static TCS; stacks grow down from the *_top labels. */
	.section .encl_stack, "aw", @progbits
	.balign	PAGE
	.globl	encl_stack_tcs1
	.type	encl_stack_tcs1, @object
encl_stack_tcs1:
	.fill	PAGE, 1, 0
	.size	encl_stack_tcs1, PAGE
	.globl	encl_stack_tcs1_top
encl_stack_tcs1_top:
	.globl	encl_stack_tcs2
	.type	encl_stack_tcs2, @object
encl_stack_tcs2:
	.fill	PAGE, 1, 0
	.size	encl_stack_tcs2, PAGE
	.globl	encl_stack_tcs2_top
encl_stack_tcs2_top:

	.section .note.GNU-stack, "", @progbits
