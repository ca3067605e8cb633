//! The listener's handshake filter: a classic BPF socket filter, run by the kernel on every
//! segment that reaches a listening socket before anything of ours sees it. It passes every
//! segment with ACK set (handshakes under way, their children's traffic) and decides about pure
//! SYNs (new handshakes): all dropped ([`refuse_all`], before a listener closes), or dropped
//! only from shunned sources ([`shunning`]), so that a flooding client costs the process nothing
//! per attempt while its entry lives (its SYNs are dropped in the kernel: no accept, no
//! descriptor, no wake-up; the client retransmits them as for a lost segment).
//!
//! A source is a [`ShunKey`]: an IPv4 address, or an IPv6 /64 (what admission calls a client).
//! The keys are searched as a binary tree compiled into the program (an internal node compares
//! against its middle key and jumps right or falls left; leaves of up to [`LEAF`] keys are
//! compared one by one), so a SYN costs about 6·log2(n/8) + 4·8 instructions, and the program
//! stays within the kernel's 4,096 ([`program_len`]; [`MAX_SHUNNED`] keys fit).
//!
//! For TCP the filter sees the segment from its TCP header (byte 13 holds the flags); the IP
//! header is read through the `SKF_NET_OFF` negative offsets (IPv4 source at 12, IPv6 source at
//! 8). The program keeps the source's key in scratch words M[0] (high 32 bits) and M[1] (low).

use libc::sock_filter;
use std::net::IpAddr;

/// Keys per leaf of the search tree.
const LEAF: usize = 8;
/// The kernel's bound on a classic BPF program (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;
/// Shunned sources a program can hold (checked by a test against [`MAX_INSNS`]).
pub const MAX_SHUNNED: usize = 640;

/// The high word of an IPv4 source's key: an IPv6 /64 with these 32 bits is multicast
/// (`ff00::/8`), never the source of a TCP segment, so the two families never meet.
const V4_HIGH: u32 = u32::MAX;

/// A source as the filter compares it: `high << 32 | low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShunKey(pub u64);

impl ShunKey {
    /// The key of a client address: an IPv4 address (an IPv4-mapped IPv6 one as IPv4, as a
    /// dual-stack listener receives it), or an IPv6 address's /64.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u64::from(V4_HIGH) << 32 | u64::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::of(IpAddr::V4(v4)),
                None => Self((u128::from(v6) >> 64) as u64),
            },
        }
    }

    fn high(self) -> u32 {
        (self.0 >> 32) as u32
    }

    fn low(self) -> u32 {
        self.0 as u32
    }
}

const SYN: u32 = 0x02;
const ACK: u32 = 0x10;
const PASS: u32 = u32::MAX;
const DROP: u32 = 0;
/// `SKF_NET_OFF`: loads relative to the network (IP) header.
const NET: u32 = (-0x10_0000i32) as u32;

fn op(code: u32, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code: code as u16, jt, jf, k }
}

const LDB_ABS: u32 = libc::BPF_LD | libc::BPF_B | libc::BPF_ABS;
const LDW_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const LD_IMM: u32 = libc::BPF_LD | libc::BPF_IMM;
const LD_MEM: u32 = libc::BPF_LD | libc::BPF_MEM;
const ST: u32 = libc::BPF_ST;
const AND: u32 = libc::BPF_ALU | libc::BPF_AND | libc::BPF_K;
const RSH: u32 = libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K;
const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const JGT: u32 = libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K;
const JA: u32 = libc::BPF_JMP | libc::BPF_JA;
const RET: u32 = libc::BPF_RET | libc::BPF_K;

/// Drops every pure SYN, passes everything else.
pub fn refuse_all() -> Vec<sock_filter> {
    vec![op(LDB_ABS, 0, 0, 13), op(AND, 0, 0, SYN | ACK), op(JEQ, 1, 0, SYN), op(RET, 0, 0, PASS), op(RET, 0, 0, DROP)]
}

/// Drops the pure SYNs whose source is one of `keys` (sorted, without duplicates), passes
/// everything else.
pub fn shunning(keys: &[ShunKey]) -> Vec<sock_filter> {
    debug_assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys sorted and unique");
    let mut p = Vec::with_capacity(program_len(keys.len()));
    p.extend([
        // 0-3: not a pure SYN: pass.
        op(LDB_ABS, 0, 0, 13),
        op(AND, 0, 0, SYN | ACK),
        op(JEQ, 1, 0, SYN),
        op(RET, 0, 0, PASS),
        // 4-6: the IP version.
        op(LDB_ABS, 0, 0, NET),
        op(RSH, 0, 0, 4),
        op(JEQ, 0, 5, 4),
        // 7-11: IPv4: M[0] = V4_HIGH, M[1] = source; on to the tree (at 16).
        op(LD_IMM, 0, 0, V4_HIGH),
        op(ST, 0, 0, 0),
        op(LDW_ABS, 0, 0, NET + 12),
        op(ST, 0, 0, 1),
        op(JA, 0, 0, 4),
        // 12-15: IPv6: M[0], M[1] = the source's /64.
        op(LDW_ABS, 0, 0, NET + 8),
        op(ST, 0, 0, 0),
        op(LDW_ABS, 0, 0, NET + 12),
        op(ST, 0, 0, 1),
    ]);
    tree(&mut p, keys);
    p
}

/// Instructions of [`shunning`] for `n` keys.
pub fn program_len(n: usize) -> usize {
    16 + tree_len(n)
}

fn tree_len(n: usize) -> usize {
    if n <= LEAF {
        4 * n + 2
    } else {
        let left = n.div_ceil(2);
        6 + tree_len(left) + tree_len(n - left)
    }
}

/// A subtree over `keys`; enters with M[0], M[1] set, ends in returns only.
fn tree(p: &mut Vec<sock_filter>, keys: &[ShunKey]) {
    let n = keys.len();
    if n <= LEAF {
        // Per key: ld M[0]; jeq high ? next : skip; ld M[1]; jeq low ? drop : next.
        for (j, k) in keys.iter().enumerate() {
            let to_drop = 4 * (n - j) - 3;
            p.push(op(LD_MEM, 0, 0, 0));
            p.push(op(JEQ, 0, 2, k.high()));
            p.push(op(LD_MEM, 0, 0, 1));
            p.push(op(JEQ, to_drop as u8, 0, k.low()));
        }
        p.push(op(RET, 0, 0, PASS));
        p.push(op(RET, 0, 0, DROP));
        return;
    }
    // Left: keys[..left] (up to and including `mid`); right: the rest, taken when key > mid.
    let left = n.div_ceil(2);
    let mid = keys[left - 1];
    let left_len = tree_len(left);
    p.extend([
        op(LD_MEM, 0, 0, 0),
        // high > mid.high: right.
        op(JGT, 3, 0, mid.high()),
        // high < mid.high: left.
        op(JEQ, 0, 3, mid.high()),
        op(LD_MEM, 0, 0, 1),
        // Same high word: low > mid.low: right, else left.
        op(JGT, 0, 1, mid.low()),
        op(JA, 0, 0, left_len as u32),
    ]);
    tree(p, &keys[..left]);
    tree(p, &keys[left..]);
}

/// Runs a program the way the kernel would on a segment (flags at TCP byte 13, the IP header
/// given apart): the verdict, for tests. Only the instructions the programs above use.
#[cfg(test)]
pub fn run(p: &[sock_filter], ip: &[u8], flags: u8) -> u32 {
    let (mut a, mut pc, mut m) = (0u32, 0usize, [0u32; 16]);
    let load = |k: u32, size: usize| -> u32 {
        if k >= NET {
            let off = (k - NET) as usize;
            ip[off..off + size].iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b))
        } else {
            assert_eq!((k, size), (13, 1), "only the flags byte");
            u32::from(flags)
        }
    };
    loop {
        let i = p[pc];
        let code = u32::from(i.code);
        pc += 1;
        match code {
            LDB_ABS => a = load(i.k, 1),
            LDW_ABS => a = load(i.k, 4),
            LD_IMM => a = i.k,
            LD_MEM => a = m[i.k as usize],
            ST => m[i.k as usize] = a,
            AND => a &= i.k,
            RSH => a >>= i.k,
            JA => pc += i.k as usize,
            JEQ => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            JGT => pc += usize::from(if a > i.k { i.jt } else { i.jf }),
            RET => return i.k,
            other => panic!("unexpected instruction {other:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4_header(src: Ipv4Addr) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[12..16].copy_from_slice(&src.octets());
        h
    }

    fn v6_header(src: Ipv6Addr) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[8..24].copy_from_slice(&src.octets());
        h
    }

    fn header(ip: IpAddr) -> Vec<u8> {
        match ip {
            IpAddr::V4(a) => v4_header(a),
            IpAddr::V6(a) => v6_header(a),
        }
    }

    #[test]
    fn every_size_drops_exactly_its_keys() {
        // Sizes around the leaf and tree boundaries, up to the cap.
        for n in [0, 1, 2, 7, 8, 9, 16, 17, 33, 100, 255, 256, MAX_SHUNNED] {
            let ips: Vec<IpAddr> = (0..n)
                .map(|i| {
                    if i % 4 == 0 {
                        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, i as u16, 7, 1, 2, 3, 4))
                    } else if i % 4 == 1 {
                        // High words that differ, low words above every high word: a tree that
                        // compared the wrong word would go the wrong way.
                        IpAddr::V6(Ipv6Addr::new(0x2001, i as u16, 0xffff, 0xfff0 + (i % 16) as u16, 0, 0, 0, 1))
                    } else {
                        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i as u32) * 7919))
                    }
                })
                .collect();
            let mut keys: Vec<ShunKey> = ips.iter().map(|&ip| ShunKey::of(ip)).collect();
            keys.sort();
            keys.dedup();
            let p = shunning(&keys);
            assert_eq!(p.len(), program_len(keys.len()));
            assert!(p.len() <= MAX_INSNS, "{n} keys: {} instructions", p.len());
            for ip in &ips {
                assert_eq!(run(&p, &header(*ip), 0x02), DROP, "{n} keys: SYN from {ip} dropped");
                assert_eq!(run(&p, &header(*ip), 0x12), PASS, "ACK from {ip} passes");
                assert_eq!(run(&p, &header(*ip), 0x10), PASS, "ACK from {ip} passes");
            }
            // Neighbours of every key pass: the next address, and another host of a shunned /64
            // is dropped (the /64 is the client) while the next /64 passes.
            for k in &keys {
                let near = [k.0.wrapping_add(1), k.0.wrapping_sub(1), k.0 ^ (1 << 32)];
                for n in near {
                    if keys.binary_search(&ShunKey(n)).is_ok() {
                        continue;
                    }
                    let ip = if (n >> 32) as u32 == V4_HIGH {
                        IpAddr::V4(Ipv4Addr::from(n as u32))
                    } else {
                        IpAddr::V6(Ipv6Addr::from(u128::from(n) << 64 | 0x1234))
                    };
                    assert_eq!(run(&p, &header(ip), 0x02), PASS, "{n:#x} is not shunned");
                }
            }
        }
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_mapped_addresses_are_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(ShunKey::of(a), ShunKey::of(b));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ShunKey::of(mapped), ShunKey::of("192.0.2.7".parse().unwrap()));
        let p = shunning(&[ShunKey::of(a)]);
        assert_eq!(run(&p, &header(b), 0x02), DROP);
        assert_eq!(run(&p, &header("2001:db8:1:3::1".parse().unwrap()), 0x02), PASS);
    }

    #[test]
    fn refuse_all_drops_only_pure_syns() {
        let p = refuse_all();
        let h = v4_header(Ipv4Addr::LOCALHOST);
        assert_eq!(run(&p, &h, 0x02), DROP);
        assert_eq!(run(&p, &h, 0x12), PASS);
        assert_eq!(run(&p, &h, 0x11), PASS);
    }
}
