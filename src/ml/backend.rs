//! The one place where a compute backend and device are chosen.
//!
//! Model code never names a backend: it takes a burn [`Device`]. Callers
//! parse a [`BackendChoice`] (from the CLI, config or a job row) and ask it
//! for a plain device (inference) or an autodiff device (training).
use std::fmt;
use std::str::FromStr;

pub use burn::tensor::Device;

/// A compute backend the build supports.
///
/// String forms: `flex` (default, pure-Rust CPU), `ndarray` (CPU,
/// deprecated upstream, kept for benchmarks), and with the `tch` feature
/// `tch-cpu` and `tch-cuda:N` (LibTorch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    #[default]
    Flex,
    NdArray,
    #[cfg(feature = "tch")]
    TchCpu,
    #[cfg(feature = "tch")]
    TchCuda(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend {0:?}: expected one of {1}")]
pub struct UnknownBackend(pub String, pub &'static str);

impl BackendChoice {
    /// The accepted spellings, for error messages and `--help`.
    #[cfg(feature = "tch")]
    pub const VALID: &'static str = "flex, ndarray, tch-cpu, tch-cuda[:N]";
    #[cfg(not(feature = "tch"))]
    pub const VALID: &'static str = "flex, ndarray (build with --features tch for tch-cpu, tch-cuda:N)";

    /// Every backend this build can run on the CPU (for benchmarks).
    pub fn cpu_backends() -> Vec<BackendChoice> {
        #[allow(unused_mut)]
        let mut v = vec![BackendChoice::Flex, BackendChoice::NdArray];
        #[cfg(feature = "tch")]
        v.push(BackendChoice::TchCpu);
        v
    }

    /// The device for inference (no autodiff).
    #[allow(deprecated)]
    pub fn device(&self) -> Device {
        match self {
            BackendChoice::Flex => Device::flex(),
            BackendChoice::NdArray => Device::ndarray(),
            #[cfg(feature = "tch")]
            BackendChoice::TchCpu => Device::libtorch(),
            #[cfg(feature = "tch")]
            BackendChoice::TchCuda(i) => Device::libtorch_cuda(*i),
        }
    }

    /// The device for training: the same backend with autodiff enabled.
    pub fn autodiff_device(&self) -> Device {
        self.device().autodiff()
    }
}

impl FromStr for BackendChoice {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "flex" | "cpu" => return Ok(BackendChoice::Flex),
            "ndarray" => return Ok(BackendChoice::NdArray),
            #[cfg(feature = "tch")]
            "tch" | "tch-cpu" | "libtorch" => return Ok(BackendChoice::TchCpu),
            #[cfg(feature = "tch")]
            "tch-cuda" | "cuda" => return Ok(BackendChoice::TchCuda(0)),
            _ => {}
        }
        #[cfg(feature = "tch")]
        if let Some(n) = s.strip_prefix("tch-cuda:").or_else(|| s.strip_prefix("cuda:"))
            && let Ok(i) = n.parse::<usize>()
        {
            return Ok(BackendChoice::TchCuda(i));
        }
        Err(UnknownBackend(s, Self::VALID))
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendChoice::Flex => write!(f, "flex"),
            BackendChoice::NdArray => write!(f, "ndarray"),
            #[cfg(feature = "tch")]
            BackendChoice::TchCpu => write!(f, "tch-cpu"),
            #[cfg(feature = "tch")]
            BackendChoice::TchCuda(i) => write!(f, "tch-cuda:{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        for b in BackendChoice::cpu_backends() {
            assert_eq!(b.to_string().parse::<BackendChoice>().unwrap(), b);
        }
        assert_eq!(" Flex ".parse::<BackendChoice>().unwrap(), BackendChoice::Flex);
        let err = "metal".parse::<BackendChoice>().unwrap_err();
        assert!(err.to_string().contains("flex"));
    }

    #[test]
    fn autodiff_device_is_autodiff() {
        assert!(BackendChoice::Flex.autodiff_device().is_autodiff());
        assert!(!BackendChoice::Flex.device().is_autodiff());
    }
}
