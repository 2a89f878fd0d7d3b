//! Is a token cache worth it? HMAC-SHA256 computed afresh against a hash-map of ready tokens.
//!
//!     cargo run --release --no-default-features --example token_cache
//!
//! A million values drawn at random from a population of subscribers (the bench workload's
//! 100k, and 10x that), laid out as in a batch buffer: each is tokenised afresh, then looked up
//! in a map of ready tokens (std's SipHash map, what a cache would be), which misses the CPU caches.
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::time::Instant;

fn main() {
    let mac = Hmac::<Sha256>::new_from_slice(b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff").unwrap();
    for &population in &[100_000usize, 1_000_000] {
        let numbers: Vec<String> = (0..population).map(|i| format!("+447700{:06}", (i * 7919) % 1_000_000)).collect();
        // A "batch": 1M values drawn at random from the population, laid out contiguously as
        // they are in a batch buffer.
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let mut batch: Vec<u8> = Vec::new();
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for _ in 0..1_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = &numbers[(x % population as u64) as usize];
            spans.push((batch.len(), batch.len() + n.len()));
            batch.extend_from_slice(n.as_bytes());
        }
        let mut out = Vec::with_capacity(64);
        let mut sink = 0u64;
        let t = Instant::now();
        for &(s, e) in &spans {
            out.clear();
            _native::route::token(&mac, "k1:", 32, &batch[s..e], &mut out);
            sink += out[5] as u64;
        }
        let hmac_ns = t.elapsed().as_nanos() as f64 / spans.len() as f64;
        let cache: HashMap<Vec<u8>, Vec<u8>> = numbers.iter().map(|n| {
            out.clear();
            _native::route::token(&mac, "k1:", 32, n.as_bytes(), &mut out);
            (n.as_bytes().to_vec(), out.clone())
        }).collect();
        let t = Instant::now();
        for &(s, e) in &spans {
            out.clear();
            out.extend_from_slice(&cache[&batch[s..e]]);
            sink += out[5] as u64;
        }
        let map_ns = t.elapsed().as_nanos() as f64 / spans.len() as f64;
        println!("{population:>9} subscribers: HMAC {hmac_ns:.0} ns/token, cached lookup {map_ns:.0} ns/token ({sink})");
    }
}
