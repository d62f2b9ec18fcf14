//! Manifest parsing. There is no public text entry point (`Bundle::load`
//! reads a directory); this drives the same steps in memory: `manifest.json`
//! text through serde into `Manifest`, then `Bundle::from_parts` with no
//! weights, which validates the manifest exactly as `Bundle::load` does
//! before it looks for tensors.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use offramp_common::model::manifest::Manifest;
use offramp_common::Bundle;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = serde_json::from_slice::<Manifest>(data) else { return };
    // What parsed serializes and parses back to the same manifest.
    let text = serde_json::to_string(&m).expect("manifests serialize");
    let back: Manifest = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text} does not parse: {e}"));
    assert_eq!(back, m, "manifest changed through its JSON form");
    let _ = Bundle::from_parts(m, HashMap::new());
});
