//! Is a token cache worth it? HMAC-SHA256 computed afresh against a hash-map of ready tokens.
//!
//!     cargo run --release --no-default-features --example token_cache
//!
//! The map holds as many subscribers as the bench workload (100k) and 10x that; lookups are
//! in random order, as a batch's numbers are, so most probes miss the CPU caches.
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::time::Instant;

fn main() {
    let mac = Hmac::<Sha256>::new_from_slice(b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff").unwrap();
    for &population in &[100_000usize, 1_000_000] {
        let numbers: Vec<String> = (0..population).map(|i| format!("+447700{:06}", (i * 7919) % 1_000_000)).collect();
        let mut order: Vec<usize> = (0..population).collect();
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut out = Vec::with_capacity(64);
        let t = Instant::now();
        let mut sink = 0u64;
        for &i in &order {
            out.clear();
            _native::route::token(&mac, "k1:", 32, numbers[i].as_bytes(), &mut out);
            sink += out[5] as u64;
        }
        let hmac_ns = t.elapsed().as_nanos() as f64 / order.len() as f64;
        let cache: HashMap<&str, String> = numbers.iter().map(|n| {
            out.clear();
            _native::route::token(&mac, "k1:", 32, n.as_bytes(), &mut out);
            (n.as_str(), String::from_utf8(out.clone()).unwrap())
        }).collect();
        let t = Instant::now();
        for &i in &order {
            out.clear();
            out.extend_from_slice(cache[numbers[i].as_str()].as_bytes());
            sink += out[5] as u64;
        }
        let map_ns = t.elapsed().as_nanos() as f64 / order.len() as f64;
        println!("{population:>9} subscribers: HMAC {hmac_ns:.0} ns/token, cached lookup {map_ns:.0} ns/token ({sink})");
    }
}
