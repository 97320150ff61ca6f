/*
 * A variant of the sgxemu test enclave body (entered through the project's
 * encl_entry.S) whose code needs R_X86_64_RELATIVE relocations: it
 * dispatches the selftest protocol's first five ops through a table of
 * function pointers (as the kernel selftest enclave does) and reaches its
 * buffer through a pointer variable. Unrelocated, both hold enclave offsets
 * and the first call jumps outside ELRANGE.
 *
 * Built with -DENCL_SELF_RELOCATE it applies its own relocations on every
 * entry (as the Intel SDK's trts does once), reading .rela.dyn through the
 * linker script's __encl_rela_start/__encl_rela_end.
 */
#include <stdint.h>

enum {
	ENCL_OP_PUT_TO_BUFFER = 0,
	ENCL_OP_GET_FROM_BUFFER = 1,
	ENCL_OP_PUT_TO_ADDRESS = 2,
	ENCL_OP_GET_FROM_ADDRESS = 3,
	ENCL_OP_NOP = 4,
	ENCL_OP_COUNT = 5,
};

/* Covers the op structs of ops 0-4 (header, value, addr). */
struct encl_op {
	uint64_t type;
	uint64_t value;
	uint64_t addr;
};

typedef void (*encl_op_fn)(struct encl_op *op);

uint8_t encl_buffer[8192]
	__attribute__((section(".data.encl_buffer"), aligned(4096), used));

/* Not const: gcc would fold a constant pointer into a RIP-relative lea. */
uint64_t *encl_buffer_ptr = (uint64_t *)encl_buffer;

void encl_body(void *rdi, void *rsi);

static void do_put_to_buffer(struct encl_op *op)
{
	*encl_buffer_ptr = op->value;
}

static void do_get_from_buffer(struct encl_op *op)
{
	op->value = *encl_buffer_ptr;
}

static void do_put_to_address(struct encl_op *op)
{
	*(volatile uint64_t *)op->addr = op->value;
}

static void do_get_from_address(struct encl_op *op)
{
	op->value = *(volatile uint64_t *)op->addr;
}

static void do_nop(struct encl_op *op)
{
	(void)op;
}

/* Absolute addresses: one R_X86_64_RELATIVE per entry. */
encl_op_fn const encl_op_table[ENCL_OP_COUNT] = {
	[ENCL_OP_PUT_TO_BUFFER] = do_put_to_buffer,
	[ENCL_OP_GET_FROM_BUFFER] = do_get_from_buffer,
	[ENCL_OP_PUT_TO_ADDRESS] = do_put_to_address,
	[ENCL_OP_GET_FROM_ADDRESS] = do_get_from_address,
	[ENCL_OP_NOP] = do_nop,
};

#ifdef ENCL_SELF_RELOCATE
struct elf64_rela {
	uint64_t r_offset;
	uint64_t r_info;
	int64_t r_addend;
};

#define R_X86_64_RELATIVE 8

extern uint8_t __encl_base[] __attribute__((visibility("hidden")));
extern const struct elf64_rela __encl_rela_start[] __attribute__((visibility("hidden")));
extern const struct elf64_rela __encl_rela_end[] __attribute__((visibility("hidden")));

/* RELATIVE is idempotent (base + addend), so a second pass is harmless. */
static void relocate_self(void)
{
	uint64_t base = (uint64_t)__encl_base;
	const struct elf64_rela *r;

	for (r = __encl_rela_start; r < __encl_rela_end; r++)
		if ((r->r_info & 0xffffffff) == R_X86_64_RELATIVE)
			*(volatile uint64_t *)(base + r->r_offset) = base + r->r_addend;
}
#endif

void encl_body(void *rdi, void *rsi)
{
	struct encl_op *op = rdi;
	/* Read the type once: the struct lives in untrusted memory. */
	uint64_t type = *(volatile uint64_t *)&op->type;

	(void)rsi;
#ifdef ENCL_SELF_RELOCATE
	relocate_self();
#endif
	if (type < ENCL_OP_COUNT)
		encl_op_table[type](op);
}
