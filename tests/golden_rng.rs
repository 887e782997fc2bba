//! The first values of every random stream, pinned: parameters, dropout masks, data order and
//! generated data. The crate's randomness goes through `rand`'s traits with a value-stable
//! generator (xoshiro256** from `rand_xoshiro`, seeded through SplitMix64); an upgrade of
//! `rand`, `rand_core` or `rand_xoshiro` that changed any of these values fails here, before
//! it silently changed every seeded run.

use candle_core::{DType, Device, ModuleT, Tensor};
use convluna::layers::{Dropout, DropoutRng};
use convluna::rng::{permutation, Rng, RngExt};
use convluna::{ParamStore, Stack, StackConfig};
use rand::{RngCore, SeedableRng};

#[test]
fn generator_streams_are_pinned() {
    let mut r = Rng::seed_from_u64(42);
    let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
    assert_eq!(got, GEN_42);
    let mut s = Rng::stream(42, 7);
    let got: Vec<u64> = (0..2).map(|_| s.next_u64()).collect();
    assert_eq!(got, STREAM_42_7);
    // the samplers on top of any RngCore
    let mut r = Rng::seed_from_u64(1);
    let f = r.f64();
    let i = r.index(1000);
    println!("f64 {f:?} index {i}");
    assert_eq!((f, i), UNIT_AND_INDEX);
    assert_eq!(permutation(8, 3), PERM_8_3);
}

#[test]
fn parameter_init_is_pinned() {
    let store = ParamStore::new(3);
    let cfg = StackConfig::convluna()
        .with_d_model(8)
        .with_heads(2)
        .with_ffn_dim(8)
        .with_layers(1)
        .with_memory(2);
    Stack::new(&cfg, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
    let t = store.tensors();
    let first = |name: &str| -> Vec<f64> {
        let v = t[name].flatten_all().unwrap().to_vec1::<f64>().unwrap();
        v[..3].to_vec()
    };
    let memory = first("memory");
    let q = first("layers.0.attn.q_proj.weight");
    println!("memory {memory:?} q {q:?}");
    assert_eq!(memory, MEMORY);
    assert_eq!(q, Q_PROJ);
}

#[test]
fn dropout_masks_are_pinned() {
    let rng = DropoutRng::new(0);
    rng.reseed(5);
    let d = Dropout::new(0.5, rng);
    let x = Tensor::ones(12, DType::F32, &Device::Cpu).unwrap();
    let m = d.forward_t(&x, true).unwrap().to_vec1::<f32>().unwrap();
    println!("dropout {m:?}");
    assert_eq!(m, DROPOUT);
}

#[cfg(feature = "lra")]
#[test]
fn generated_data_and_order_are_pinned() {
    use convluna::data::{ListOpsConfig, ListOpsDataset, Sequence};
    let s = ListOpsDataset::generate_splits(&ListOpsConfig::small(), 4, 2, 2, 1, 200);
    let ex = s.train.get(0).unwrap();
    let Sequence::Tokens(t) = ex.doc else {
        panic!("tokens")
    };
    println!("listops {:?} label {}", &t[..8], ex.label);
    assert_eq!(
        (t[..8].to_vec(), ex.label),
        (LISTOPS.to_vec(), LISTOPS_LABEL)
    );
}

const GEN_42: [u64; 3] = [
    1546998764402558742,
    6990951692964543102,
    12544586762248559009,
];
const STREAM_42_7: [u64; 2] = [957088264372496645, 17808670337632769445];
const UNIT_AND_INDEX: (f64, usize) = (0.7029218331588505, 520);
const PERM_8_3: [usize; 8] = [6, 0, 3, 7, 2, 1, 4, 5];
const MEMORY: [f64; 3] = [-3.0324577454007104, -1.797914524134713, -1.660790570359315];
const Q_PROJ: [f64; 3] = [
    0.27904381801467937,
    -0.26397797527343186,
    0.09270848359095585,
];
const DROPOUT: [f32; 12] = [0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 2.0, 0.0];
#[cfg(feature = "lra")]
const LISTOPS: [u32; 8] = [13, 9, 5, 1, 5, 12, 4, 14];
#[cfg(feature = "lra")]
const LISTOPS_LABEL: u32 = 4;
