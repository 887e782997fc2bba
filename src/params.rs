//! Parameters: a seeded [`VarMap`] backend and safetensors save / load.
//!
//! Candle's CPU random generator cannot be seeded, so [`ParamStore`] initialises every
//! parameter on the host from a generator seeded by `(seed, parameter name)`: the same seed
//! gives the same weights on every device and whatever the order in which layers are built.
//! All parameters live in one [`VarMap`] under PyTorch-style names (`layers.0.attn.q_proj.weight`,
//! Linear weights `[out, in]`), listed in the crate documentation.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use crate::error::{Error, Result};
use crate::rng::{Rng, RngExt};

/// 64-bit FNV-1a, used to derive a stable per-parameter seed.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The generator of parameter `name` under `seed` (see [`crate::rng`]).
pub(crate) fn rng_for(seed: u64, name: &str) -> Rng {
    Rng::stream(seed, fnv1a(name.as_bytes()))
}

/// Standard normal samples by Box–Muller (portable, no extra dependency).
pub(crate) fn normal_vec(rng: &mut Rng, n: usize, mean: f64, std: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.f64().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push(mean + std * r * t.cos());
        out.push(mean + std * r * t.sin());
    }
    out.truncate(n);
    out
}

/// Host-side values for an [`Init`] hint.
fn init_values(init: Init, shape: &Shape, rng: &mut Rng) -> Vec<f64> {
    let n = shape.elem_count();
    match init {
        Init::Const(v) => vec![v; n],
        Init::Randn { mean, stdev } => normal_vec(rng, n, mean, stdev),
        Init::Uniform { lo, up } => (0..n).map(|_| lo + (up - lo) * rng.f64()).collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = fan.for_shape(shape).max(1) as f64;
            let std = non_linearity.gain() / fan.sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Normal => normal_vec(rng, n, 0.0, std),
                candle_nn::init::NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    (0..n).map(|_| -b + 2.0 * b * rng.f64()).collect()
                }
            }
        }
    }
}

/// A [`VarMap`] whose missing variables are created with seeded, device-independent values.
///
/// ```
/// use candle_core::{DType, Device};
/// let store = convluna::ParamStore::new(42);
/// let vb = store.var_builder(DType::F32, &Device::Cpu);
/// let w = vb.get_with_hints((2, 3), "w", candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 }).unwrap();
/// let again = convluna::ParamStore::new(42).var_builder(DType::F32, &Device::Cpu)
///     .get_with_hints((2, 3), "w", candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 }).unwrap();
/// assert_eq!(w.to_vec2::<f32>().unwrap(), again.to_vec2::<f32>().unwrap());
/// ```
#[derive(Clone)]
pub struct ParamStore {
    varmap: VarMap,
    seed: u64,
    /// Set for a store read from a file: a parameter the file lacks is an error (never a
    /// silent random initialisation), and the names the model asked for are recorded.
    source: Option<Arc<Source>>,
}

/// The file a store was read from and the parameters the model has asked for.
#[derive(Debug)]
struct Source {
    path: PathBuf,
    requested: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamStore")
            .field("seed", &self.seed)
            .field("len", &self.len())
            .finish()
    }
}

impl ParamStore {
    /// An empty store whose parameters will be initialised from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            varmap: VarMap::new(),
            seed,
            source: None,
        }
    }

    /// A store holding the tensors of a safetensors file (as trainable variables in `dtype`
    /// on `device`), for building a model from them: nothing is initialised at random, and a
    /// parameter the model asks for but the file lacks is an error naming both. After the
    /// model is built, [`ParamStore::check_all_used`] tells whether the file had extra
    /// tensors.
    pub fn from_file(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let tensors = load_tensors(path, device)?;
        let store = Self {
            varmap: VarMap::new(),
            seed: 0,
            source: Some(Arc::new(Source {
                path: path.to_path_buf(),
                requested: Mutex::new(HashSet::new()),
            })),
        };
        {
            let mut map = store.lock();
            for (name, t) in tensors {
                map.insert(name, Var::from_tensor(&t.to_dtype(dtype)?)?);
            }
        }
        Ok(store)
    }

    /// For a store read with [`ParamStore::from_file`]: an error naming the first tensor of
    /// the file that no model parameter asked for (a misspelt or foreign file must not pass
    /// silently). Always `Ok` for other stores.
    pub fn check_all_used(&self) -> Result<()> {
        let Some(src) = &self.source else {
            return Ok(());
        };
        let requested = src.requested.lock().unwrap_or_else(|e| e.into_inner());
        let mut extra: Vec<String> = self
            .lock()
            .keys()
            .filter(|k| !requested.contains(*k))
            .cloned()
            .collect();
        extra.sort();
        match extra.first() {
            Some(name) => Err(Error::format(
                &src.path,
                format!(
                    "unexpected parameter `{name}` (not in the model){}",
                    if extra.len() > 1 {
                        format!(" and {} more", extra.len() - 1)
                    } else {
                        String::new()
                    }
                ),
            )),
            None => Ok(()),
        }
    }

    /// The underlying [`VarMap`] (for optimisers: `store.varmap().all_vars()`).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// A [`VarBuilder`] that creates missing parameters in this store.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// Number of parameter tensors.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store holds no parameter.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total number of scalar parameters.
    pub fn num_parameters(&self) -> usize {
        self.lock().values().map(|v| v.elem_count()).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Var>> {
        // A poisoned lock only means another thread panicked while holding it; the map
        // itself is still consistent (insertions are single operations).
        self.varmap.data().lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sorted `(name, shape)` of every parameter.
    pub fn names(&self) -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect();
        v.sort();
        v
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<Var> {
        self.lock().get(name).cloned()
    }

    /// Every parameter, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Copies of every parameter, by name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Overwrites parameters from `tensors`. Every parameter of the store must be present with
    /// the same shape; extra tensors are an error too (a misspelt name must not pass silently).
    pub fn assign(&self, tensors: &HashMap<String, Tensor>, source: &Path) -> Result<()> {
        let map = self.lock();
        for (name, var) in map.iter() {
            let t = tensors
                .get(name)
                .ok_or_else(|| Error::format(source, format!("missing parameter `{name}`")))?;
            if t.dims() != var.dims() {
                return Err(Error::format(
                    source,
                    format!(
                        "parameter `{name}` has shape {:?}, the model expects {:?}",
                        t.dims(),
                        var.dims()
                    ),
                ));
            }
            let t = t.to_dtype(var.dtype())?.to_device(var.device())?;
            var.set(&t)?;
        }
        if let Some(extra) = tensors.keys().find(|k| !map.contains_key(*k)) {
            return Err(Error::format(
                source,
                format!("unexpected parameter `{extra}` (not in the model)"),
            ));
        }
        Ok(())
    }

    /// Writes every parameter to a safetensors file, atomically (temporary file, then rename),
    /// with `metadata` in the header (the crate stores the model config there).
    pub fn save(&self, path: &Path, metadata: Option<HashMap<String, String>>) -> Result<()> {
        let tensors = self.tensors();
        save_tensors(&tensors, path, metadata)
    }

    /// Loads every parameter from a safetensors file written by [`ParamStore::save`] (or by
    /// PyTorch with the same names).
    pub fn load(&self, path: &Path) -> Result<()> {
        let tensors = load_tensors(path, &Device::Cpu)?;
        self.assign(&tensors, path)
    }
}

impl SimpleBackend for ParamStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut map = self.lock();
        if let Some(src) = &self.source {
            src.requested
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.to_string());
        }
        if let Some(v) = map.get(name) {
            if v.shape() != &s {
                let place = self
                    .source
                    .as_ref()
                    .map_or(String::new(), |src| format!(" in {}", src.path.display()));
                candle_core::bail!(
                    "parameter `{name}` has shape {:?}{place}, the model asks for {:?}",
                    v.dims(),
                    s.dims()
                );
            }
            return Ok(v.as_tensor().clone());
        }
        if let Some(src) = &self.source {
            return Err(Error::format(
                &src.path,
                format!("missing parameter `{name}` of shape {:?}", s.dims()),
            )
            .into());
        }
        let mut rng = rng_for(self.seed, name);
        let values = init_values(h, &s, &mut rng);
        let t = Tensor::from_vec(values, s, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        map.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.lock().get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no parameter `{name}` in the store"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }
}

/// Writes `path` atomically: the bytes go to `path.tmp-<pid>`, are synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let file_name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn st_dtype(dtype: DType) -> Result<safetensors::Dtype> {
    Ok(match dtype {
        DType::F32 => safetensors::Dtype::F32,
        DType::F64 => safetensors::Dtype::F64,
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::I64 => safetensors::Dtype::I64,
        DType::U32 => safetensors::Dtype::U32,
        DType::U8 => safetensors::Dtype::U8,
        other => {
            return Err(Error::Candle(candle_core::Error::Msg(format!(
                "cannot save dtype {other:?} to safetensors"
            ))))
        }
    })
}

/// Serialises named tensors (any device) to safetensors bytes with optional metadata.
pub fn tensors_to_bytes(
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut owned = Vec::with_capacity(names.len());
    for name in names {
        let t = tensors[name].to_device(&Device::Cpu)?.contiguous()?;
        let dtype = st_dtype(t.dtype())?;
        let dims = t.dims().to_vec();
        let bytes = tensor_bytes(&t)?;
        owned.push((name.clone(), dtype, dims, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Candle(candle_core::Error::Msg(e.to_string())))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, metadata)
        .map_err(|e| Error::Candle(candle_core::Error::Msg(e.to_string())))
}

fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    fn le<T: Copy, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.into_iter().flat_map(f).collect()
    }
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => le(flat.to_vec1::<f32>()?, f32::to_le_bytes),
        DType::F64 => le(flat.to_vec1::<f64>()?, f64::to_le_bytes),
        DType::F16 => le(flat.to_vec1::<half::f16>()?, half::f16::to_le_bytes),
        DType::BF16 => le(flat.to_vec1::<half::bf16>()?, half::bf16::to_le_bytes),
        DType::I64 => le(flat.to_vec1::<i64>()?, i64::to_le_bytes),
        DType::U32 => le(flat.to_vec1::<u32>()?, u32::to_le_bytes),
        DType::U8 => flat.to_vec1::<u8>()?,
        other => {
            return Err(Error::Candle(candle_core::Error::Msg(format!(
                "cannot save dtype {other:?}"
            ))))
        }
    })
}

/// Saves named tensors atomically to a safetensors file.
pub fn save_tensors(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes = tensors_to_bytes(tensors, metadata)?;
    write_atomic(path, &bytes)
}

/// Reads the metadata header of a safetensors file.
pub fn load_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Loads every tensor of a safetensors file onto `device`. A truncated or corrupted file is an
/// [`Error::Format`] naming the file.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let t = match view.dtype() {
            safetensors::Dtype::F32 => {
                Tensor::from_vec(from_le(data, f32::from_le_bytes), shape, device)?
            }
            safetensors::Dtype::F64 => {
                Tensor::from_vec(from_le(data, f64::from_le_bytes), shape, device)?
            }
            safetensors::Dtype::F16 => {
                Tensor::from_vec(from_le(data, half::f16::from_le_bytes), shape, device)?
            }
            safetensors::Dtype::BF16 => {
                Tensor::from_vec(from_le(data, half::bf16::from_le_bytes), shape, device)?
            }
            safetensors::Dtype::I64 => {
                Tensor::from_vec(from_le(data, i64::from_le_bytes), shape, device)?
            }
            safetensors::Dtype::U32 => {
                Tensor::from_vec(from_le(data, u32::from_le_bytes), shape, device)?
            }
            safetensors::Dtype::U8 => Tensor::from_vec(data.to_vec(), shape, device)?,
            other => {
                return Err(Error::format(
                    path,
                    format!("tensor `{name}` has unsupported dtype {other:?}"),
                ))
            }
        };
        out.insert(name, t);
    }
    Ok(out)
}

fn from_le<T, const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}
