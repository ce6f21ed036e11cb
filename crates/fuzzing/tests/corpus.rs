//! Replays every committed fuzz input (`fuzz/corpus/<target>/`, the minimised corpus, and
//! `fuzz/regressions/<target>/`, the inputs that once broke a target) through the target bodies
//! on the stable toolchain, so the ordinary test run keeps them passing without libFuzzer.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn committed_corpus_and_regressions_pass_every_target() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for (name, target) in pricefeed_fuzzing::TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(name));
        // A target without a corpus would replay nothing and pass: the corpus is the point.
        assert!(corpus.len() >= 10, "{name}: {} corpus inputs", corpus.len());
        for file in corpus
            .iter()
            .chain(&inputs(&fuzz.join("regressions").join(name)))
        {
            let data = std::fs::read(file).unwrap();
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "{name} fails on {}", file.display());
        }
    }
}
