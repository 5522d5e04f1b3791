//! The fuzz targets on a stable toolchain, bounded: each target's seed
//! corpus (`fuzz/seeds/<target>/`) and a fixed number of deterministic
//! mutations of it go through the same invariant checks the cargo-fuzz
//! targets run (`fuzz/checks.rs`). Not coverage-guided, so it finds less
//! than `cargo fuzz run`; it keeps the invariants checked on every CI run,
//! which has no nightly compiler. A fixed seed makes a failure repeatable.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Mutated inputs per target: a few seconds for all of them in a debug build.
const MUTATIONS: usize = 10_000;
/// Inputs never grow past this, so a run's time stays bounded.
const MAX_INPUT: usize = 16 * 1024;

/// Tokens the parsers give meaning to, spliced into inputs so that
/// mutations reach past the first syntax check.
const DICTIONARY: &[&str] = &[
    ",",
    "\"",
    "=",
    ";",
    ";q=",
    "q=0",
    "q=0.5",
    "q=1",
    "q=1e-3",
    "q=nan",
    "*/*",
    "application/*",
    "\\",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\0",
    "é",
    "\u{2028}",
    "Bearer ",
    "Basic ",
    "realm=",
    "service=",
    "scope=",
    "https://",
    "http://",
    "ftp://",
    "//",
    "@",
    "user:pw@",
    "[::1]",
    "127.0.0.1:5000",
    "[[upstream]]",
    "[upstream]",
    "name = ",
    "url = ",
    "tag_ttl = \"",
    "max_size = ",
    "\"\"\"",
    "'''",
    "#",
    "{",
    "}",
    "[",
    "]",
    "1s",
    "50GiB",
    "-1",
    "18446744073709551616",
    "sha256:",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "/v2/",
    "/manifests/",
    "/blobs/",
    "/tags/list",
    "..",
    "%2e",
    "bytes=",
    "-",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// xorshift64*: enough randomness for mutations, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    // One input in eight is noise, the rest start from a seed.
    if rng.below(8) == 0 {
        let len = rng.below(256);
        return (0..len).map(|_| rng.next() as u8).collect();
    }
    let mut input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(8) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                let special = b"\0\x7f\xff\",=\n\\;";
                input[i] = special[rng.below(special.len())];
            }
            2 => {
                let token = DICTIONARY[rng.below(DICTIONARY.len())].as_bytes();
                input.splice(at..at, token.iter().copied());
            }
            3 => {
                let end = (at + rng.below(16)).min(input.len());
                input.drain(at..end);
            }
            4 => {
                let end = (at + rng.below(64)).min(input.len());
                let copy = input[at..end].to_vec();
                input.splice(at..at, copy);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            6 => {
                // Long repetitions: the length bounds must hold however
                // much a client or an upstream sends.
                let token = DICTIONARY[rng.below(DICTIONARY.len())].as_bytes();
                let times = 1 + rng.below(400);
                let run: Vec<u8> = token.repeat(times);
                input.splice(at..at, run);
            }
            _ => input.truncate(at),
        }
    }
    input.truncate(MAX_INPUT);
    input
}

fn read_seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("seed entry").path())
        .collect();
    // Sorted, so that the mutations are the same on every machine.
    entries.sort();
    entries
        .iter()
        .map(|p| std::fs::read(p).expect("read seed"))
        .collect()
}

/// Runs one input, naming it if a check panics (the check's own message
/// has already been printed by the panic hook).
fn run(target: &str, check: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
        panic!(
            "fuzz smoke: {target} failed on input {:?} (save it as a file and replay it \
             with `cargo fuzz run {target} FILE`)",
            input.escape_ascii().to_string()
        );
    }
}

#[test]
fn every_fuzz_target_holds_its_invariants_on_seeds_and_mutations() {
    for (target, check) in checks::TARGETS {
        let seeds = read_seeds(target);
        assert!(!seeds.is_empty(), "no seeds for {target}");
        for seed in &seeds {
            run(target, *check, seed);
        }
        // FNV-1a of the name: each target its own (fixed) sequence.
        let seed = target.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let mut rng = Rng(seed);
        for _ in 0..MUTATIONS {
            let input = mutate(&mut rng, &seeds);
            run(target, *check, &input);
        }
    }
}
