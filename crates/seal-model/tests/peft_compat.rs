//! PEFT interoperability: peft loads the adapters we write and we load the
//! adapters peft writes, with identical logits (`scripts/peft_reference.py`,
//! run through `$SEAL_VENV/bin/python`; skipped with a message without it).

use seal_model::config::LlamaConfig;
use seal_model::{CausalLm, Llama, LoadOptions, LoraConfig};
use tch::{Device, Kind, Tensor};

#[test]
fn peft_loads_our_adapters_and_we_load_peft_adapters() {
    let Some(python) = seal_testkit::venv_python() else {
        seal_data::testing::skip(
            "python",
            "no Python environment at $SEAL_VENV (run `cargo xtask setup`)",
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let base_dir = tmp.path().join("base");
    let ours_dir = tmp.path().join("ours");
    let theirs_dir = tmp.path().join("theirs");
    let mut cfg = LlamaConfig::tiny(97);
    cfg.tie_word_embeddings = false;
    let mut model = Llama::random(&cfg, Device::Cpu, Kind::Float, 21).unwrap();
    model.save_pretrained(&base_dir).unwrap();
    let mut lora = LoraConfig::default();
    lora.r = 4;
    lora.alpha = 8.0;
    model.add_lora(&lora, 5).unwrap();
    {
        let _g = tch::no_grad_guard();
        for (_, mut p) in model.lora_parameters() {
            let r = p.randn_like() * 0.2;
            p.copy_(&r);
        }
    }
    model.save_lora(&ours_dir, None).unwrap();
    let ids: Vec<i64> = vec![3, 14, 15, 92, 65, 35, 89, 79];
    let input = Tensor::from_slice(&ids).view([1, -1]);
    let ours_logits = model.logits(&input, None).unwrap().view([-1]);

    let script = seal_testkit::workspace_root().join("scripts/peft_reference.py");
    let out_json = tmp.path().join("ref.json");
    let ids_arg = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg("--base")
        .arg(&base_dir)
        .arg("--adapter")
        .arg(&ours_dir)
        .arg("--new-adapter-out")
        .arg(&theirs_dir)
        .args(["--ids", &ids_arg, "--out"])
        .arg(&out_json)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    let to_tensor = |key: &str| {
        let v: Vec<f32> = reference[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        Tensor::from_slice(&v)
    };
    let diff = (&ours_logits - to_tensor("ours_logits"))
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        diff < 1e-4,
        "peft applies our adapter differently: max diff {diff}"
    );

    let mut fresh = Llama::load(&base_dir, &LoadOptions::default()).unwrap();
    fresh.load_lora(&theirs_dir).unwrap();
    let lcfg = &fresh.lora().unwrap().config;
    assert_eq!((lcfg.r, lcfg.alpha), (2, 5.0));
    let theirs_logits = fresh.logits(&input, None).unwrap().view([-1]);
    let diff = (&theirs_logits - to_tensor("theirs_logits"))
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        diff < 1e-4,
        "we apply peft's adapter differently: max diff {diff}"
    );
    let base_logits = Llama::load(&base_dir, &LoadOptions::default())
        .unwrap()
        .logits(&input, None)
        .unwrap()
        .view([-1]);
    assert!(
        (&theirs_logits - base_logits).abs().max().double_value(&[]) > 1e-3,
        "peft's adapter is not a no-op"
    );
}
