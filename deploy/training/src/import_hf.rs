//! `offramp import hf`: a Hugging Face BERT-family checkpoint
//! (`config.json` + `model.safetensors` + `tokenizer.json`) as an Offramp
//! bundle: an embeddings block, one block per encoder layer, exit heads
//! after the chosen layers, and the tokenizer inside the bundle.
//!
//! Heads come from the checkpoint when it has them: DeeBERT's per-layer
//! `highway` heads (pooler dense + tanh + classifier on the first token),
//! and a `BertForSequenceClassification` pooler + `classifier` for the final
//! exit. Other exits get seeded heads (pooling + linear) for `offramp train`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use offramp_common::model::manifest::{
    block_tensor, exit_tensor, BlockSpec, ExitSpec, InputSpec, LayerSpec, Manifest, PoolMode, TokenizerSpec,
    FORMAT_VERSION, TOKENIZER_FILE, TOKEN_IDS, WEIGHTS_FILE,
};
use offramp_common::rng::SplitMix64;
use offramp_common::Bundle;
use serde::Deserialize;

/// Import a BERT-family checkpoint (Hugging Face layout) as a bundle.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportHfArgs {
    /// Checkpoint directory: config.json, model.safetensors, tokenizer.json.
    #[arg(long = "from")]
    pub from: PathBuf,
    /// Output bundle directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Encoder layers to put an exit after: `all`, or layer numbers from 1
    /// (e.g. `1,3,5`). The last layer always gets one.
    #[arg(long, default_value = "all")]
    pub exits: String,
    /// Class names, comma-separated (default: the checkpoint's `id2label`
    /// when it has a classifier).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Pooling of new exit heads: `mean` over real tokens or the first
    /// (`cls`) token.
    #[arg(long, value_enum, default_value = "mean")]
    pub pool: PoolArg,
    /// Longest input in tokens (longer texts are truncated); default
    /// min(128, the checkpoint's position embeddings).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Model id in the manifest (default: the output folder's name).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Seed of the new exit heads' weights.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolArg {
    Mean,
    Cls,
}

impl From<PoolArg> for PoolMode {
    fn from(p: PoolArg) -> Self {
        match p {
            PoolArg::Mean => PoolMode::Mean,
            PoolArg::Cls => PoolMode::Cls,
        }
    }
}

/// What an import produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    pub model_id: String,
    pub out: PathBuf,
    pub layers: usize,
    pub hidden: usize,
    pub exits: Vec<ImportedExit>,
    pub labels: Vec<String>,
    pub max_tokens: usize,
    pub parameters: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportedExit {
    pub name: String,
    pub after_layer: usize,
    /// `checkpoint` (DeeBERT highway or classifier weights) or `new`.
    pub head: &'static str,
}

impl ImportReport {
    pub fn render(&self) -> String {
        let heads: Vec<String> =
            self.exits.iter().map(|e| format!("{} (layer {}, {})", e.name, e.after_layer, e.head)).collect();
        format!(
            "imported {} into {}: {} encoder layers, hidden {}, {} parameters, up to {} tokens\nlabels: {}\nexits: {}\n",
            self.model_id,
            self.out.display(),
            self.layers,
            self.hidden,
            self.parameters,
            self.max_tokens,
            self.labels.join(", "),
            heads.join(", ")
        )
    }
}

/// The fields of a BERT `config.json` the import reads.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "two")]
    type_vocab_size: usize,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
    #[serde(default = "gelu")]
    hidden_act: String,
    #[serde(default)]
    position_embedding_type: Option<String>,
    #[serde(default)]
    id2label: Option<HashMap<String, String>>,
}

fn two() -> usize {
    2
}
fn eps() -> f64 {
    1e-12
}
fn gelu() -> String {
    "gelu".into()
}

/// Reads a checkpoint's tensors by their Hugging Face names, with or without
/// the `bert.` prefix, as f32.
struct Checkpoint {
    tensors: HashMap<String, Tensor>,
    prefix: &'static str,
    path: PathBuf,
}

impl Checkpoint {
    fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("model.safetensors");
        if !path.is_file() {
            bail!("{}: no model.safetensors (only safetensors checkpoints are read)", dir.display());
        }
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .with_context(|| format!("reading {}", path.display()))?;
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        Ok(Self { tensors, prefix, path })
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(&format!("{}{name}", self.prefix)) || self.tensors.contains_key(name)
    }

    /// Tensor `name` (tried with the model prefix, then as written), as f32
    /// of shape `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .tensors
            .get(&full)
            .or_else(|| self.tensors.get(name))
            .with_context(|| format!("missing tensor {full:?} in {}", self.path.display()))?;
        if t.dims() != shape {
            bail!("tensor {full:?} in {} has shape {:?}, expected {shape:?}", self.path.display(), t.dims());
        }
        Ok(t.to_dtype(DType::F32)?)
    }

    /// A LayerNorm's weight and bias (`weight`/`bias`, or the older `gamma`/`beta`).
    fn layer_norm(&self, name: &str, hidden: usize) -> Result<(Tensor, Tensor)> {
        if self.has(&format!("{name}.gamma")) {
            Ok((self.get(&format!("{name}.gamma"), &[hidden])?, self.get(&format!("{name}.beta"), &[hidden])?))
        } else {
            Ok((self.get(&format!("{name}.weight"), &[hidden])?, self.get(&format!("{name}.bias"), &[hidden])?))
        }
    }
}

/// Parses `--exits`: `all` or encoder-layer numbers `1..=layers`; the last
/// layer is always included. Returns layer numbers, ascending.
pub fn parse_exits(spec: &str, layers: usize) -> Result<Vec<usize>> {
    let mut out: Vec<usize> = if spec.trim() == "all" {
        (1..=layers).collect()
    } else {
        let mut v = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let n: usize = part.parse().with_context(|| format!("--exits: {part:?} is not a layer number"))?;
            if n == 0 || n > layers {
                bail!("--exits: layer {n} does not exist; the checkpoint has layers 1..={layers}");
            }
            v.push(n);
        }
        v
    };
    out.push(layers);
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

pub fn run(args: &ImportHfArgs) -> Result<ImportReport> {
    let (bundle, report) = import(args)?;
    bundle.save(&args.out).with_context(|| format!("writing the bundle to {}", args.out.display()))?;
    Ok(report)
}

/// Builds the bundle in memory (and what the report says about it).
// Long on purpose: one pass over the checkpoint's tensors in layer order,
// each mapped and checked where it is read; split up, every step would
// need the whole name map and report.
pub fn import(args: &ImportHfArgs) -> Result<(Bundle, ImportReport)> {
    let dir = &args.from;
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let config: HfConfig =
        serde_json::from_str(&text).with_context(|| format!("{} is not a BERT config", config_path.display()))?;
    match config.model_type.as_deref() {
        Some("bert") | None => {}
        Some(other) => bail!(
            "{}: unsupported model_type {other:?}; `import hf` reads BERT-family encoders (model_type \"bert\", \
             e.g. BERT, MiniLM, DeeBERT checkpoints)",
            config_path.display()
        ),
    }
    if config.hidden_act != "gelu" {
        bail!(
            "{}: unsupported hidden_act {:?} (only the exact erf \"gelu\")",
            config_path.display(),
            config.hidden_act
        );
    }
    if let Some(p) = config.position_embedding_type.as_deref().filter(|p| *p != "absolute") {
        bail!("{}: unsupported position_embedding_type {p:?} (only \"absolute\")", config_path.display());
    }
    let (h, layers) = (config.hidden_size, config.num_hidden_layers);
    if layers == 0 || config.num_attention_heads == 0 || h % config.num_attention_heads != 0 {
        bail!(
            "{}: {} layers with hidden {h} and {} heads is not a BERT encoder",
            config_path.display(),
            layers,
            config.num_attention_heads
        );
    }
    let ckpt = Checkpoint::load(dir)?;
    let tokenizer_path = dir.join(TOKENIZER_FILE);
    let tokenizer_json =
        std::fs::read(&tokenizer_path).with_context(|| format!("reading {}", tokenizer_path.display()))?;

    let has_classifier = ckpt.tensors.contains_key("classifier.weight");
    let labels = if !args.labels.is_empty() {
        args.labels.clone()
    } else {
        match (&config.id2label, has_classifier) {
            (Some(map), true) => {
                let mut v: Vec<(usize, String)> =
                    map.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v.clone()))).collect();
                v.sort();
                v.into_iter().map(|(_, l)| l).collect()
            }
            _ => bail!("{} has no classifier: name the classes with --labels a,b,...", dir.display()),
        }
    };
    if labels.len() < 2 {
        bail!("a classifier needs at least 2 labels, got {}", labels.len());
    }
    let classes = labels.len();
    let max_tokens = args.max_tokens.unwrap_or(config.max_position_embeddings.min(128));
    if max_tokens == 0 || max_tokens > config.max_position_embeddings {
        bail!("--max-tokens {max_tokens} must be in 1..={}", config.max_position_embeddings);
    }
    let exit_layers = parse_exits(&args.exits, layers)?;

    let model_id = args.model_id.clone().unwrap_or_else(|| {
        args.out.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "encoder".into())
    });
    let eps = config.layer_norm_eps;
    let mut tensors = HashMap::new();
    let mut blocks = vec![BlockSpec {
        name: "embeddings".into(),
        layer: LayerSpec::BertEmbeddings {
            vocab_size: config.vocab_size,
            hidden: h,
            max_positions: config.max_position_embeddings,
            type_vocab_size: config.type_vocab_size,
            eps,
        },
    }];
    tensors.insert(block_tensor(0, "word"), ckpt.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?);
    tensors.insert(
        block_tensor(0, "position"),
        ckpt.get("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?,
    );
    tensors.insert(
        block_tensor(0, "token_type"),
        ckpt.get("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?,
    );
    let (w, b) = ckpt.layer_norm("embeddings.LayerNorm", h)?;
    tensors.insert(block_tensor(0, "ln.weight"), w);
    tensors.insert(block_tensor(0, "ln.bias"), b);

    let i = config.intermediate_size;
    for l in 0..layers {
        let block = l + 1;
        blocks.push(BlockSpec {
            name: format!("layer{l}"),
            layer: LayerSpec::BertLayer { hidden: h, heads: config.num_attention_heads, intermediate: i, eps },
        });
        let p = format!("encoder.layer.{l}");
        let linear = |name: &str, out: usize, inp: usize| -> Result<(Tensor, Tensor)> {
            Ok((ckpt.get(&format!("{p}.{name}.weight"), &[out, inp])?, ckpt.get(&format!("{p}.{name}.bias"), &[out])?))
        };
        let parts = [
            ("query", linear("attention.self.query", h, h)?),
            ("key", linear("attention.self.key", h, h)?),
            ("value", linear("attention.self.value", h, h)?),
            ("attn_out", linear("attention.output.dense", h, h)?),
            ("attn_ln", ckpt.layer_norm(&format!("{p}.attention.output.LayerNorm"), h)?),
            ("ffn_in", linear("intermediate.dense", i, h)?),
            ("ffn_out", linear("output.dense", h, i)?),
            ("ffn_ln", ckpt.layer_norm(&format!("{p}.output.LayerNorm"), h)?),
        ];
        for (name, (w, b)) in parts {
            tensors.insert(block_tensor(block, &format!("{name}.weight")), w);
            tensors.insert(block_tensor(block, &format!("{name}.bias")), b);
        }
    }

    // Exit heads: checkpoint heads where they exist, seeded ones elsewhere.
    let mut rng = SplitMix64::new(args.seed);
    let mut exits = Vec::new();
    let mut imported = Vec::new();
    for (e, &layer) in exit_layers.iter().enumerate() {
        let highway = format!("encoder.highway.{}", layer - 1);
        let is_final = layer == layers;
        let from_checkpoint: Option<[(String, Vec<usize>); 4]> =
            if ckpt.has(&format!("{highway}.classifier.weight")) && !is_final {
                Some([
                    (format!("{highway}.pooler.dense.weight"), vec![h, h]),
                    (format!("{highway}.pooler.dense.bias"), vec![h]),
                    (format!("{highway}.classifier.weight"), vec![classes, h]),
                    (format!("{highway}.classifier.bias"), vec![classes]),
                ])
            } else if is_final && has_classifier {
                Some([
                    ("pooler.dense.weight".into(), vec![h, h]),
                    ("pooler.dense.bias".into(), vec![h]),
                    ("classifier.weight".into(), vec![classes, h]),
                    ("classifier.bias".into(), vec![classes]),
                ])
            } else {
                None
            };
        let name = if is_final { "final".to_string() } else { format!("layer{layer}") };
        // A checkpoint head is BERT's pooler on the first token: [pool cls,
        // dense, tanh, classifier] (parameters in layers 1 and 3). A new head
        // is [pool, linear] (parameters in layer 1).
        let head = match &from_checkpoint {
            Some(names) => {
                for ((slot, suffix), (tensor, shape)) in
                    [(1, "weight"), (1, "bias"), (3, "weight"), (3, "bias")].iter().zip(names)
                {
                    tensors.insert(exit_tensor(e, *slot, suffix), ckpt.get(tensor, shape)?);
                }
                vec![
                    LayerSpec::Pool { mode: PoolMode::Cls },
                    LayerSpec::Linear { in_features: h, out_features: h, relu: false },
                    LayerSpec::Tanh,
                    LayerSpec::Linear { in_features: h, out_features: classes, relu: false },
                ]
            }
            None => {
                let bound = 1.0 / (h as f32).sqrt();
                let weights: Vec<f32> = (0..classes * h).map(|_| (rng.next_f32() * 2.0 - 1.0) * bound).collect();
                tensors.insert(exit_tensor(e, 1, "weight"), Tensor::from_vec(weights, (classes, h), &Device::Cpu)?);
                tensors.insert(exit_tensor(e, 1, "bias"), Tensor::zeros(classes, DType::F32, &Device::Cpu)?);
                vec![
                    LayerSpec::Pool { mode: args.pool.into() },
                    LayerSpec::Linear { in_features: h, out_features: classes, relu: false },
                ]
            }
        };
        imported.push(ImportedExit {
            name: name.clone(),
            after_layer: layer,
            head: if from_checkpoint.is_some() { "checkpoint" } else { "new" },
        });
        exits.push(ExitSpec { name, after_block: layer, layers: head });
    }

    let sha256 = sha256_hex(&tokenizer_json);
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        model_id: model_id.clone(),
        description: format!(
            "BERT-family encoder imported from {} ({layers} layers, hidden {h}), exits after layers {:?}",
            dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            exit_layers
        ),
        input: InputSpec {
            shape: vec![max_tokens],
            dtype: TOKEN_IDS.into(),
            preprocess: format!("text tokenized by {TOKENIZER_FILE} with its special tokens, at most {max_tokens}"),
            tokenizer: Some(TokenizerSpec { file: TOKENIZER_FILE.into(), sha256 }),
        },
        labels: labels.clone(),
        weights: WEIGHTS_FILE.into(),
        blocks,
        exits,
        holds: None,
        peer_fingerprints: Default::default(),
    };
    let parameters = tensors.values().map(|t| t.elem_count()).sum();
    let bundle = Bundle::from_parts(manifest, tensors)
        .context("the imported model does not validate")?
        .with_tokenizer(tokenizer_json)
        .context("the checkpoint's tokenizer.json")?;
    let report = ImportReport {
        model_id,
        out: args.out.clone(),
        layers,
        hidden: h,
        exits: imported,
        labels,
        max_tokens,
        parameters,
    };
    Ok((bundle, report))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A seeded tiny BERT checkpoint in the Hugging Face layout (config.json,
/// model.safetensors with HF tensor names, tokenizer.json with a small
/// WordPiece vocabulary), for tests and smoke runs: 2 layers, hidden 32,
/// 4 heads, FFN 64.
pub mod testing {
    use std::collections::HashMap;
    use std::path::Path;

    use anyhow::Result;
    use candle_core::{Device, Tensor};
    use offramp_common::rng::SplitMix64;

    /// Words of the tiny vocabulary (besides the special tokens and single
    /// letters, so that any lower-case text tokenizes).
    pub const WORDS: &[&str] = &[
        "the", "a", "movie", "film", "good", "bad", "great", "awful", "is", "was", "not", "very", "fun", "boring",
        "and", "but", "it", "story", "what", "who", "where", "how", "many", "?", ".", ",", "!",
    ];

    pub struct TinyBert {
        pub layers: usize,
        pub hidden: usize,
        pub heads: usize,
        pub intermediate: usize,
        pub max_positions: usize,
        /// Write DeeBERT highway heads and a classifier for this many classes.
        pub highway_classes: Option<usize>,
        /// Write tensor names with the `bert.` prefix.
        pub prefixed: bool,
    }

    impl Default for TinyBert {
        fn default() -> Self {
            Self {
                layers: 2,
                hidden: 32,
                heads: 4,
                intermediate: 64,
                max_positions: 64,
                highway_classes: None,
                prefixed: false,
            }
        }
    }

    /// The vocabulary, in id order: `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`,
    /// `[MASK]`, the words, then letters and `##` letters.
    pub fn vocab() -> Vec<String> {
        let mut v: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
        v.extend(WORDS.iter().map(|s| s.to_string()));
        for c in 'a'..='z' {
            v.push(c.to_string());
        }
        for c in 'a'..='z' {
            v.push(format!("##{c}"));
        }
        for c in '0'..='9' {
            v.push(c.to_string());
        }
        v
    }

    /// A BERT tokenizer.json (lower-casing normalizer, BERT pre-tokenizer,
    /// WordPiece over `vocab_txt`, `[CLS] ... [SEP]`), built with the
    /// `tokenizers` crate.
    pub fn tokenizer_json(vocab_txt: &Path) -> Result<String> {
        use tokenizers::models::wordpiece::WordPiece;
        use tokenizers::normalizers::BertNormalizer;
        use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
        use tokenizers::processors::bert::BertProcessing;
        use tokenizers::Tokenizer;
        let path = vocab_txt.to_str().ok_or_else(|| anyhow::anyhow!("{} is not UTF-8", vocab_txt.display()))?;
        let vocab = WordPiece::read_file(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let wordpiece =
            WordPiece::builder().vocab(vocab).unk_token("[UNK]".into()).build().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut tok = Tokenizer::new(wordpiece);
        let err = |e: tokenizers::Error| anyhow::anyhow!("{e}");
        tok.with_normalizer(Some(BertNormalizer::default())).map_err(err)?;
        tok.with_pre_tokenizer(Some(BertPreTokenizer));
        tok.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), 3), ("[CLS]".into(), 2))));
        tok.to_string(true).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Arguments importing the tiny checkpoint in `from` into `out` as the
    /// tests and fuzz targets use it: exits after every layer, mean pooling,
    /// two labels, at most 32 tokens, model id `tiny-bert`.
    pub fn import_args(from: &Path, out: &Path) -> super::ImportHfArgs {
        super::ImportHfArgs {
            from: from.to_path_buf(),
            out: out.to_path_buf(),
            exits: "all".into(),
            labels: vec!["negative".into(), "positive".into()],
            pool: super::PoolArg::Mean,
            max_tokens: Some(32),
            model_id: Some("tiny-bert".into()),
            seed: 7,
        }
    }

    impl TinyBert {
        /// Writes the checkpoint into `dir` with weights seeded by `seed`.
        pub fn write(&self, dir: &Path, seed: u64) -> Result<()> {
            std::fs::create_dir_all(dir)?;
            let (h, i, vocab) = (self.hidden, self.intermediate, vocab().len());
            let mut rng = SplitMix64::new(seed);
            let mut tensors = HashMap::new();
            let pre = if self.prefixed { "bert." } else { "" };
            let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| offset + (rng.next_f32() * 2.0 - 1.0) * scale).collect();
                tensors.insert(name, Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches"));
            };
            add(format!("{pre}embeddings.word_embeddings.weight"), vec![vocab, h], 0.5, 0.0);
            add(format!("{pre}embeddings.position_embeddings.weight"), vec![self.max_positions, h], 0.5, 0.0);
            add(format!("{pre}embeddings.token_type_embeddings.weight"), vec![2, h], 0.5, 0.0);
            add(format!("{pre}embeddings.LayerNorm.weight"), vec![h], 0.1, 1.0);
            add(format!("{pre}embeddings.LayerNorm.bias"), vec![h], 0.1, 0.0);
            let w = 1.0 / (h as f32).sqrt();
            for l in 0..self.layers {
                let p = format!("{pre}encoder.layer.{l}");
                for (name, out, inp) in [
                    ("attention.self.query", h, h),
                    ("attention.self.key", h, h),
                    ("attention.self.value", h, h),
                    ("attention.output.dense", h, h),
                    ("intermediate.dense", i, h),
                    ("output.dense", h, i),
                ] {
                    add(format!("{p}.{name}.weight"), vec![out, inp], w * 1.7, 0.0);
                    add(format!("{p}.{name}.bias"), vec![out], 0.1, 0.0);
                }
                for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                    add(format!("{p}.{name}.weight"), vec![h], 0.1, 1.0);
                    add(format!("{p}.{name}.bias"), vec![h], 0.1, 0.0);
                }
            }
            add(format!("{pre}pooler.dense.weight"), vec![h, h], w, 0.0);
            add(format!("{pre}pooler.dense.bias"), vec![h], 0.1, 0.0);
            if let Some(c) = self.highway_classes {
                for l in 0..self.layers.saturating_sub(1) {
                    let p = format!("{pre}encoder.highway.{l}");
                    add(format!("{p}.pooler.dense.weight"), vec![h, h], w, 0.0);
                    add(format!("{p}.pooler.dense.bias"), vec![h], 0.1, 0.0);
                    add(format!("{p}.classifier.weight"), vec![c, h], w, 0.0);
                    add(format!("{p}.classifier.bias"), vec![c], 0.1, 0.0);
                }
                add("classifier.weight".into(), vec![c, h], w, 0.0);
                add("classifier.bias".into(), vec![c], 0.1, 0.0);
            }
            candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
            let mut config = serde_json::json!({
                "model_type": "bert",
                "architectures": ["BertModel"],
                "vocab_size": vocab,
                "hidden_size": h,
                "num_hidden_layers": self.layers,
                "num_attention_heads": self.heads,
                "intermediate_size": i,
                "max_position_embeddings": self.max_positions,
                "type_vocab_size": 2,
                "layer_norm_eps": 1e-12,
                "hidden_act": "gelu",
                "position_embedding_type": "absolute",
            });
            if let Some(c) = self.highway_classes {
                let id2label: serde_json::Map<String, serde_json::Value> =
                    (0..c).map(|k| (k.to_string(), serde_json::Value::from(format!("class{k}")))).collect();
                config["id2label"] = serde_json::Value::Object(id2label);
            }
            std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
            let vocab_txt = dir.join("vocab.txt");
            std::fs::write(&vocab_txt, self::vocab().join("\n") + "\n")?;
            std::fs::write(dir.join("tokenizer.json"), tokenizer_json(&vocab_txt)?)?;
            Ok(())
        }
    }
}
