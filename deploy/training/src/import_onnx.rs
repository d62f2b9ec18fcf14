//! `offramp inspect onnx` and `offramp import onnx`: an ONNX graph (what
//! `torch.onnx.export` writes) profiled at its valid cut points, and cut
//! into a classifier bundle whose blocks and exit heads are ONNX subgraphs
//! (see `offramp_common::model::onnx`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use offramp_common::model::onnx::{self, ImportSpec, Profile};
use offramp_common::model::SplitSide;

#[derive(Debug, Clone, clap::Args)]
pub struct InspectOnnxArgs {
    /// The `.onnx` file.
    #[arg(long = "from")]
    pub from: PathBuf,
    /// The output that ends the backbone (default: the graph's last output).
    #[arg(long = "final")]
    pub final_output: Option<String>,
    /// Print the profile as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ImportOnnxArgs {
    /// The `.onnx` file: one f32 input whose dimensions other than the
    /// batch are fixed, exits as graph outputs.
    #[arg(long = "from")]
    pub from: PathBuf,
    /// Tensors to cut the backbone at, comma-separated (`offramp inspect
    /// onnx` lists the valid ones); N cuts make N + 1 blocks.
    #[arg(long, value_delimiter = ',', required = true)]
    pub cuts: Vec<String>,
    /// Graph outputs that are exits (class logits), comma-separated; the
    /// last one is the final output, which ends the backbone.
    #[arg(long, value_delimiter = ',', required = true)]
    pub exits: Vec<String>,
    /// Class names, comma-separated (default: 0, 1, ...).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Model id in the manifest (default: the output folder's name).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Output bundle directory.
    #[arg(long)]
    pub out: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub fn inspect(args: &InspectOnnxArgs) -> Result<Profile> {
    onnx::inspect(&read(&args.from)?, args.final_output.as_deref())
        .with_context(|| format!("inspecting {}", args.from.display()))
}

/// The profile as a table: one row per cut point.
pub fn render_profile(p: &Profile) -> String {
    let mut s = format!(
        "input {:?} {:?} (batch excluded), {} nodes; backbone ends at {:?}: {:.2} MMAC, {} parameters\n",
        p.input,
        p.input_shape,
        p.nodes,
        p.final_output,
        p.backbone_macs as f64 / 1e6,
        p.backbone_params
    );
    s.push_str(&format!("valid cuts ({}), in order:\n", p.cuts.len()));
    s.push_str(&format!(
        "  {:<4} {:<40} {:<22} {:>16} {:>10} {:>10} {:>10}\n",
        "#", "tensor", "op (node)", "shape", "f32 bytes", "MMAC<", "params<"
    ));
    for (i, c) in p.cuts.iter().enumerate() {
        s.push_str(&format!(
            "  {:<4} {:<40} {:<22} {:>16} {:>10} {:>10.3} {:>10}\n",
            i + 1,
            c.tensor,
            format!("{} ({})", c.op, c.node),
            format!("{:?}", c.shape),
            c.bytes,
            c.macs_before as f64 / 1e6,
            c.params_before
        ));
    }
    s.push_str("outputs:\n");
    for o in &p.outputs {
        let role = if o.name == p.final_output {
            "final (ends the backbone)".to_string()
        } else {
            match &o.hangs_off {
                Some(c) => format!("exit off cut {c:?}"),
                None => "not an exit off one cut".to_string(),
            }
        };
        s.push_str(&format!(
            "  {:<24} {:>10} {role}\n",
            o.name,
            o.shape.as_ref().map(|s| format!("{s:?}")).unwrap_or("?".into())
        ));
    }
    s
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportOnnxReport {
    pub model_id: String,
    pub out: PathBuf,
    /// Per block: name, per-sample output shape, nodes, MMAC.
    pub blocks: Vec<(String, Vec<usize>, usize, f64)>,
    /// Per exit: name, the block it hangs after.
    pub exits: Vec<(String, usize)>,
    pub classes: usize,
    /// The cloud fingerprint at split 1 (the handshake's check).
    pub cloud_fingerprint_k1: Option<String>,
}

impl ImportOnnxReport {
    pub fn render(&self) -> String {
        let mut s = format!("{} -> {}\n", self.model_id, self.out.display());
        for (b, (name, shape, nodes, mmac)) in self.blocks.iter().enumerate() {
            s.push_str(&format!("  block {b}: {name:<30} out {shape:?}, {nodes} nodes, {mmac:.3} MMAC\n"));
        }
        for (name, after) in &self.exits {
            s.push_str(&format!("  exit {name:?} after block {after}\n"));
        }
        s.push_str(&format!(
            "  {} classes; split with `offramp split --model {} --at K --edge-out E --cloud-out C` (K in 0..={})\n",
            self.classes,
            self.out.display(),
            self.blocks.len()
        ));
        s
    }
}

pub fn import(args: &ImportOnnxArgs) -> Result<ImportOnnxReport> {
    let model_id = match &args.model_id {
        Some(id) => id.clone(),
        None => args
            .out
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .context("--out has no folder name to use as the model id; give --model-id")?,
    };
    let spec = ImportSpec {
        model_id,
        description: format!(
            "imported from {} by `offramp import onnx`",
            args.from.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ),
        cuts: args.cuts.clone(),
        exits: args.exits.clone(),
        labels: (!args.labels.is_empty()).then(|| args.labels.clone()),
    };
    let bundle =
        onnx::import(&read(&args.from)?, &spec).with_context(|| format!("importing {}", args.from.display()))?;
    bundle.save(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    let m = bundle.manifest();
    Ok(ImportOnnxReport {
        model_id: m.model_id.clone(),
        out: args.out.clone(),
        blocks: m
            .blocks
            .iter()
            .enumerate()
            .map(|(b, spec)| {
                let nodes = match &spec.layer {
                    offramp_common::model::LayerSpec::Onnx { nodes, .. } => *nodes,
                    _ => 0,
                };
                let shape = bundle.shape_at(b + 1).map(<[usize]>::to_vec).unwrap_or_default();
                (spec.name.clone(), shape, nodes, bundle.block_macs(b) as f64 / 1e6)
            })
            .collect(),
        exits: m.exits.iter().map(|e| (e.name.clone(), e.after_block)).collect(),
        classes: bundle.num_classes(),
        cloud_fingerprint_k1: bundle.fingerprint(SplitSide::Cloud, 1),
    })
}
