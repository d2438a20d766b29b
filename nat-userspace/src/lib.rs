//! natd: the control plane of the XDP NAT gateway.
//!
//! - `config`: the settings (schema, loading and validation, the machine);
//! - `datapath`: the loaded programs and typed access to their maps;
//! - `nat`: the daemon and its jobs (ports, sessions, first packets,
//!   fragments, quotas, logs, views);
//! - `packet`: the one user-side reader and writer of IPv4 packets;
//! - `proxy`: name-based proxies on a shared public port (TLS SNI, HTTP
//!   Host, QUIC);
//! - `control`: how the client commands reach a serving natd;
//! - `metrics`: Prometheus metrics, served off the packet loop;
//! - `forwarding`: the sysctls natd turns on and puts back;
//! - `handover`: what a natd stopping with the datapath serving leaves the next;
//! - `interfaces`: the served interfaces watched through netlink, and what kind of device each is;
//! - `logging`: natd's log lines;
//! - `cli` and `serve`: the command line, and `natd run`.

pub mod cli;
pub mod config;
pub mod control;
pub mod datapath;
pub mod forwarding;
pub mod handover;
pub mod interfaces;
pub mod logging;
pub mod metrics;
pub mod nat;
pub mod packet;
pub mod proxy;
pub mod serve;

/// The compiled XDP programs (nat-ebpf), embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nat"));

/// `Some(step)` when the programs were built cut down for timing the hit
/// path (`NAT_EBPF_CUT_AFTER`, nat-ebpf's `cut`): they translate nothing
/// whole, and `natd run` refuses to start with them.
pub const CUT_DOWN_BUILD: Option<&str> = option_env!("NAT_EBPF_CUT_AFTER");

/// Measurement-only programs (the XDP_DROP floor, the load generator, the
/// sink), for the tests and benchmarks only.
#[cfg(feature = "testing")]
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));

#[cfg(test)]
mod object_tests {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionKind};

    /// The calls in `object`'s code to compiler-builtins' memset, memcpy
    /// and memmove, as "section+offset calls name".
    fn mem_calls(object: &[u8]) -> Vec<String> {
        let elf = object::File::parse(object).expect("the object is ELF");
        let mut calls = Vec::new();
        for section in elf.sections().filter(|s| s.kind() == SectionKind::Text) {
            let section_name = section.name().unwrap_or("?").to_string();
            for (offset, relocation) in section.relocations() {
                let RelocationTarget::Symbol(index) = relocation.target() else { continue };
                let name = elf.symbol_by_index(index).ok().and_then(|s| s.name().ok()).unwrap_or("");
                if matches!(name, "memset" | "memcpy" | "memmove") {
                    calls.push(format!("{section_name}+{offset:#x} calls {name}"));
                }
            }
        }
        calls
    }

    /// In BPF those functions are byte loops, and LLVM's BPF backend calls
    /// them for any zeroed array or struct literal with an array field,
    /// however short: a route lookup ran 64 rounds of one, a forwarded
    /// packet 3, and the verifier walked the loop again at every state that
    /// reached a call (15% of nat_lan's verified instructions).
    #[test]
    fn no_program_calls_a_byte_loop_mem_function() {
        let calls = mem_calls(super::EBPF_OBJECT);
        assert!(
            calls.is_empty(),
            "the XDP programs call byte-loop mem functions: {calls:#?}\nfind the code with `llvm-objdump -d -l` of the object (a `call -1` after `r3 = <length>`); \
             zero in 8-byte stores (`route::Fib::zeroed_in`), build the value from words (`nat_common::FlowKey::new`) or leave a helper's buffer uninitialised"
        );
    }

    /// The instructions in `object`'s code of BPF class `class` (the low
    /// three bits of the opcode).
    fn instructions_of_class(object: &[u8], class: u8) -> usize {
        let elf = object::File::parse(object).expect("the object is ELF");
        elf.sections()
            .filter(|s| s.kind() == SectionKind::Text)
            .map(|s| s.data().expect("section data").chunks_exact(8).filter(|insn| insn[0] & 0x07 == class).count())
            .sum()
    }

    /// Built for BPF v3 (`nat-userspace/build.rs`, `BPF_CPU`): 32-bit jumps
    /// and arithmetic, which v1 (rustc's `generic`) has neither of.
    #[test]
    fn the_programs_use_bpf_v3_instructions() {
        const BPF_ALU: u8 = 0x04;
        const BPF_JMP32: u8 = 0x06;
        let (alu32, jmp32) = (instructions_of_class(super::EBPF_OBJECT, BPF_ALU), instructions_of_class(super::EBPF_OBJECT, BPF_JMP32));
        assert!(alu32 > 0 && jmp32 > 0, "{alu32} 32-bit ALU and {jmp32} 32-bit jump instructions: the object was built for BPF v1, not v3 (see BPF_CPU in nat-userspace/build.rs)");
    }

    /// A BPF object whose `xdp` code is `call -1; exit`, the call relocated
    /// against `callee` (R_BPF_64_32), as LLVM emits a call to a function
    /// of the object's `.text`.
    fn object_calling(callee: &str) -> Vec<u8> {
        use object::{
            Architecture, BinaryFormat, Endianness, RelocationFlags, SymbolFlags, SymbolKind, SymbolScope,
            write::{Object, Relocation, Symbol, SymbolSection},
        };
        let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
        let xdp = obj.add_section(Vec::new(), b"xdp".to_vec(), SectionKind::Text);
        let code = [0x85, 0x10, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x95, 0, 0, 0, 0, 0, 0, 0];
        obj.append_section_data(xdp, &code, 8);
        let symbol = obj.add_symbol(Symbol {
            name: callee.as_bytes().to_vec(),
            value: 0,
            size: 0,
            kind: SymbolKind::Text,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Undefined,
            flags: SymbolFlags::None,
        });
        let flags = RelocationFlags::Elf { r_type: object::elf::R_BPF_64_32 };
        obj.add_relocation(xdp, Relocation { offset: 0, symbol, addend: 0, flags }).unwrap();
        obj.write().unwrap()
    }

    /// The check finds such a call, and only such a call.
    #[test]
    fn a_call_to_memset_is_found_and_other_calls_are_not() {
        assert_eq!(mem_calls(&object_calling("memset")), ["xdp+0x0 calls memset"]);
        assert!(mem_calls(&object_calling("options_fit")).is_empty());
    }
}
