/*
 * Body of the benchmark enclave: the test enclave's entry stubs and layout
 * (encl_entry.S, encl.lds) with a loop instead of the selftest protocol.
 * RDI points to a struct accept_range in untrusted memory; the enclave
 * EACCEPTs `count` pages from `first`, as a runtime growing its heap does,
 * and reports the first failing EACCEPT's code and how many pages it took.
 */
#include <stdint.h>

struct secinfo {
	uint64_t flags;
	uint8_t reserved[56];
} __attribute__((aligned(64)));

struct accept_range {
	uint64_t first;
	uint64_t count;
	uint64_t flags;
	uint64_t ret;
	uint64_t accepted;
};

/* The layout wants it to open the data segment (encl.lds). */
uint8_t encl_buffer[8192]
	__attribute__((section(".data.encl_buffer"), aligned(4096), used));

void encl_body(void *rdi, void *rsi);

void encl_body(void *rdi, void *rsi)
{
	volatile struct accept_range *op = rdi;
	struct secinfo si = { .flags = op->flags };
	uint64_t first = op->first, count = op->count, i, rax = 0;

	(void)rsi;
	for (i = 0; i < count; i++) {
		rax = 5; /* EACCEPT */
		__asm__ volatile(".byte 0x0f, 0x01, 0xd7"
				 : "+a"(rax)
				 : "b"(&si), "c"(first + (i << 12))
				 : "memory");
		if (rax)
			break;
	}
	op->ret = rax;
	op->accepted = i;
}
