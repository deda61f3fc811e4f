//! The `Optimizer` trait and its three built-in rules against hand-written
//! updates; a rule written outside the crate gets zeroing, norms and
//! clipping from the trait.

use seal_model::optim::{Adam, AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use tch::{Kind, Tensor};

fn param(values: &[f64]) -> Tensor {
    Tensor::from_slice(values).set_requires_grad(true)
}

/// Sets `p`'s gradient to `g` by backpropagating `sum(p·g)`.
fn set_grad(p: &Tensor, g: &[f64]) {
    let mut grad = p.grad();
    if grad.defined() {
        let _ = grad.zero_();
    }
    (p * Tensor::from_slice(g)).sum(Kind::Double).backward();
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.detach()).unwrap()
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

#[test]
fn sgd_with_momentum_and_nesterov_follows_pytorch() {
    for nesterov in [false, true] {
        let p = param(&[1.0, -2.0]);
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.01,
            nesterov,
        };
        let mut opt = Sgd::new(vec![("p".into(), p.shallow_clone())], cfg);
        let grads = [[0.5, -1.0], [0.2, 0.3], [-0.4, 0.1]];
        // torch.optim.SGD(momentum, dampening 0, weight_decay), by hand.
        let (mut x, mut buf): ([f64; 2], Option<[f64; 2]>) = ([1.0, -2.0], None);
        for g in grads {
            set_grad(&p, &g);
            opt.step().unwrap();
            let d: Vec<f64> = (0..2).map(|i| g[i] + 0.01 * x[i]).collect();
            let b: [f64; 2] = match buf {
                None => [d[0], d[1]],
                Some(b) => [0.9 * b[0] + d[0], 0.9 * b[1] + d[1]],
            };
            for i in 0..2 {
                let step = if nesterov { d[i] + 0.9 * b[i] } else { b[i] };
                x[i] -= 0.1 * step;
            }
            buf = Some(b);
        }
        assert!(
            close(&values(&p), &x, 1e-12),
            "{nesterov}: {:?} vs {x:?}",
            values(&p)
        );
        assert_eq!(opt.step_count(), 3);
        // The momentum buffer is state: a restored copy continues identically.
        let (step, state) = opt.state();
        assert_eq!(state.len(), 1);
        let q = p.detach().copy().set_requires_grad(true);
        let mut restored = Sgd::new(vec![("p".into(), q.shallow_clone())], cfg);
        restored.load_state(step, &state).unwrap();
        set_grad(&p, &[0.3, 0.3]);
        set_grad(&q, &[0.3, 0.3]);
        opt.step().unwrap();
        restored.step().unwrap();
        assert_eq!(values(&p), values(&q));
    }
}

#[test]
fn adam_couples_weight_decay_and_adamw_decouples_it() {
    let cfg = AdamWConfig {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.5,
    };
    let (p, q) = (param(&[2.0]), param(&[2.0]));
    let mut adam = Adam::new(vec![("p".into(), p.shallow_clone())], cfg);
    let mut adamw = AdamW::new(vec![("p".into(), q.shallow_clone())], cfg);
    set_grad(&p, &[0.1]);
    set_grad(&q, &[0.1]);
    adam.step().unwrap();
    adamw.step().unwrap();
    // First step: the bias-corrected update is sign(g') = 1 for both, so
    // Adam moves by lr; AdamW also shrinks θ by lr·wd·θ first.
    assert!(close(&values(&p), &[2.0 - 0.1], 1e-6), "{:?}", values(&p));
    assert!(
        close(&values(&q), &[2.0 * (1.0 - 0.05) - 0.1], 1e-6),
        "{:?}",
        values(&q)
    );
    // Without decay the two rules are the same, bit for bit.
    let cfg = AdamWConfig {
        weight_decay: 0.0,
        ..cfg
    };
    let (p, q) = (param(&[0.3, -0.7]), param(&[0.3, -0.7]));
    let mut adam = Adam::new(vec![("p".into(), p.shallow_clone())], cfg);
    let mut adamw = AdamW::new(vec![("p".into(), q.shallow_clone())], cfg);
    for g in [[0.1, 0.2], [-0.3, 0.05], [0.7, -0.1]] {
        set_grad(&p, &g);
        set_grad(&q, &g);
        adam.step().unwrap();
        adamw.step().unwrap();
    }
    assert_eq!(values(&p), values(&q));
    assert_eq!((adam.name(), adamw.name()), ("adam", "adamw"));
}

/// A rule written by a user: sign descent, no state.
struct SignDescent {
    params: Vec<(String, Tensor)>,
    lr: f64,
    steps: i64,
}

impl Optimizer for SignDescent {
    fn name(&self) -> &str {
        "sign-descent"
    }
    fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn step(&mut self) -> seal_model::Result<()> {
        let _g = tch::no_grad_guard();
        for (_, p) in &self.params {
            let g = p.grad();
            if g.defined() {
                let _ = p.shallow_clone().g_sub_(&(g.sign() * self.lr));
            }
        }
        self.steps += 1;
        Ok(())
    }
    fn step_count(&self) -> i64 {
        self.steps
    }
    fn state(&self) -> (i64, Vec<(String, Tensor)>) {
        (self.steps, Vec::new())
    }
    fn load_state(&mut self, step: i64, _state: &[(String, Tensor)]) -> seal_model::Result<()> {
        self.steps = step;
        Ok(())
    }
}

#[test]
fn a_user_rule_gets_zeroing_norms_and_clipping_from_the_trait() {
    let p = param(&[1.0, 1.0]);
    let mut opt: Box<dyn Optimizer> = Box::new(SignDescent {
        params: vec![("p".into(), p.shallow_clone())],
        lr: 0.25,
        steps: 0,
    });
    set_grad(&p, &[3.0, -4.0]);
    assert!((opt.grad_norm() - 5.0).abs() < 1e-12);
    let before = opt.clip_grad_norm(1.0);
    assert!((before - 5.0).abs() < 1e-12);
    assert!((opt.grad_norm() - 1.0).abs() < 1e-5);
    opt.step().unwrap();
    assert_eq!(values(&p), vec![0.75, 1.25]);
    opt.zero_grad();
    assert_eq!(opt.grad_norm(), 0.0);
}

#[test]
fn non_finite_gradients_and_missing_state_are_named() {
    let p = param(&[1.0]);
    let mut opt = Sgd::new(
        vec![("weight".into(), p.shallow_clone())],
        SgdConfig::default(),
    );
    set_grad(&p, &[f64::NAN]);
    let err = opt.step().unwrap_err().to_string();
    assert!(err.contains("`weight`"), "{err}");
    let mut opt = Sgd::new(
        vec![("weight".into(), p.shallow_clone())],
        SgdConfig {
            momentum: 0.9,
            ..SgdConfig::default()
        },
    );
    let err = opt.load_state(4, &[]).unwrap_err().to_string();
    assert!(err.contains("weight.momentum_buffer"), "{err}");
}
