/*
 * Body of the sgxemu test enclave. It speaks the Linux SGX selftest's
 * operation protocol: RDI points to an op struct in untrusted memory that
 * starts with a u64 type; the enclave reads and writes it in place.
 */
#include <stdint.h>

enum encl_op_type {
	ENCL_OP_PUT_TO_BUFFER = 0,
	ENCL_OP_GET_FROM_BUFFER = 1,
	ENCL_OP_PUT_TO_ADDRESS = 2,
	ENCL_OP_GET_FROM_ADDRESS = 3,
	ENCL_OP_NOP = 4,
	ENCL_OP_EACCEPT = 5,
	ENCL_OP_EMODPE = 6,
	ENCL_OP_INIT_TCS_PAGE = 7,
	ENCL_OP_MAX = 8,
};

enum { ENCLU_EACCEPT = 5, ENCLU_EMODPE = 6 };

struct encl_op_header {
	uint64_t type;
};

struct encl_op_put_to_buf {
	struct encl_op_header header;
	uint64_t value;
};

struct encl_op_get_from_buf {
	struct encl_op_header header;
	uint64_t value;
};

struct encl_op_put_to_addr {
	struct encl_op_header header;
	uint64_t value;
	uint64_t addr;
};

struct encl_op_get_from_addr {
	struct encl_op_header header;
	uint64_t value;
	uint64_t addr;
};

struct encl_op_eaccept {
	struct encl_op_header header;
	uint64_t epc_addr;
	uint64_t flags;
	uint64_t ret;
};

struct encl_op_emodpe {
	struct encl_op_header header;
	uint64_t epc_addr;
	uint64_t flags;
};

struct encl_op_init_tcs_page {
	struct encl_op_header header;
	uint64_t tcs_page;
	uint64_t ssa;
	uint64_t entry;
};

/* ENCLU leaves require SECINFO to be 64-byte aligned. */
struct secinfo {
	uint64_t flags;
	uint64_t reserved[7];
} __attribute__((aligned(64)));

/* Architectural TCS layout (SDM Vol. 3D, TCS fields). */
struct tcs_image {
	uint64_t state;
	uint64_t flags;
	uint64_t ossa;
	uint32_t cssa;
	uint32_t nssa;
	uint64_t oentry;
	uint64_t aep;
	uint64_t ofsbase;
	uint64_t ogsbase;
	uint32_t fslimit;
	uint32_t gslimit;
	uint8_t reserved[4024];
};

_Static_assert(sizeof(struct secinfo) == 64, "SECINFO is 64 bytes");
_Static_assert(sizeof(struct tcs_image) == 4096, "TCS is one page");

/* Tests poke at its second page, so the .lds puts it first in .data. */
uint8_t encl_buffer[8192]
	__attribute__((section(".data.encl_buffer"), aligned(4096), used));

void encl_body(void *rdi, void *rsi);

static inline uint64_t enclu(uint64_t leaf, const void *rbx, uint64_t rcx)
{
	uint64_t rax = leaf;

	__asm__ volatile(".byte 0x0f, 0x01, 0xd7"
			 : "+a"(rax)
			 : "b"(rbx), "c"(rcx)
			 : "memory");
	return rax;
}

/* Inline rep stosb: no libc, and gcc cannot turn it back into memset(). */
static inline void zero_bytes(void *dst, uint64_t len)
{
	__asm__ volatile("rep stosb"
			 : "+D"(dst), "+c"(len)
			 : "a"(0)
			 : "memory");
}

static void do_put_to_buffer(struct encl_op_put_to_buf *op)
{
	uint64_t value = op->value;

	__builtin_memcpy(encl_buffer, &value, sizeof(value));
}

static void do_get_from_buffer(struct encl_op_get_from_buf *op)
{
	uint64_t value;

	__builtin_memcpy(&value, encl_buffer, sizeof(value));
	op->value = value;
}

/* Volatile keeps each access a single 8-byte load/store, so a fault is
 * taken exactly at addr and an ERESUME redoes just that access. */
static void do_put_to_address(struct encl_op_put_to_addr *op)
{
	*(volatile uint64_t *)op->addr = op->value;
}

static void do_get_from_address(struct encl_op_get_from_addr *op)
{
	op->value = *(volatile uint64_t *)op->addr;
}

static void do_eaccept(struct encl_op_eaccept *op)
{
	struct secinfo si = { .flags = op->flags };
	int32_t rax = (int32_t)enclu(ENCLU_EACCEPT, &si, op->epc_addr);

	op->ret = (uint64_t)(int64_t)rax;
}

static void do_emodpe(struct encl_op_emodpe *op)
{
	struct secinfo si = { .flags = op->flags };

	enclu(ENCLU_EMODPE, &si, op->epc_addr);
}

static void do_init_tcs_page(struct encl_op_init_tcs_page *op)
{
	struct tcs_image *tcs = (struct tcs_image *)op->tcs_page;

	zero_bytes(tcs, sizeof(*tcs));
	tcs->ossa = op->ssa;
	tcs->cssa = 0;
	tcs->nssa = 1;
	tcs->oentry = op->entry;
	tcs->fslimit = 0xFFFFFFFF;
	tcs->gslimit = 0xFFFFFFFF;
}

void encl_body(void *rdi, void *rsi)
{
	/* Read the type once: the struct lives in untrusted memory. */
	uint64_t type = *(volatile uint64_t *)rdi;

	(void)rsi;
	switch (type) {
	case ENCL_OP_PUT_TO_BUFFER:
		do_put_to_buffer(rdi);
		break;
	case ENCL_OP_GET_FROM_BUFFER:
		do_get_from_buffer(rdi);
		break;
	case ENCL_OP_PUT_TO_ADDRESS:
		do_put_to_address(rdi);
		break;
	case ENCL_OP_GET_FROM_ADDRESS:
		do_get_from_address(rdi);
		break;
	case ENCL_OP_NOP:
		break;
	case ENCL_OP_EACCEPT:
		do_eaccept(rdi);
		break;
	case ENCL_OP_EMODPE:
		do_emodpe(rdi);
		break;
	case ENCL_OP_INIT_TCS_PAGE:
		do_init_tcs_page(rdi);
		break;
	default:
		/* type >= ENCL_OP_MAX: nothing to do, the stub still EEXITs. */
		break;
	}
}
