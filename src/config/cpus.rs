//! CPU lists ("0-3,6") as a value: `shadow.cpus` parses into a `CpuSet`, which
//! `inference::cpu` applies to threads.

/// Most CPUs a `CpuSet` can name; `libc::cpu_set_t` holds 1024 as well.
pub const MAX_CPUS: usize = 1024;

/// A set of CPU numbers, as in a CPU list ("0-3,6"). Fixed size and `Copy`, so it can sit in
/// `WorkerSettings`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuSet([u64; MAX_CPUS / 64]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuListError {
    #[error("empty CPU list; write CPUs like \"2-3,6\"")]
    Empty,
    #[error("{0:?} is not a CPU number or range like \"2-3\"")]
    Syntax(String),
    #[error("range {0:?} ends before it starts")]
    Backwards(String),
    #[error("CPU {0} is beyond the supported {MAX_CPUS}")]
    TooLarge(usize),
}

impl CpuSet {
    pub const fn empty() -> CpuSet {
        CpuSet([0; MAX_CPUS / 64])
    }

    /// Parses a kernel-style CPU list: comma-separated numbers and inclusive ranges.
    pub fn parse(list: &str) -> Result<CpuSet, CpuListError> {
        let mut set = CpuSet::empty();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let number = |s: &str| s.trim().parse::<usize>().map_err(|_| CpuListError::Syntax(part.to_string()));
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => (number(part)?, number(part)?),
            };
            if hi < lo {
                return Err(CpuListError::Backwards(part.to_string()));
            }
            if hi >= MAX_CPUS {
                return Err(CpuListError::TooLarge(hi));
            }
            for cpu in lo..=hi {
                set.insert(cpu);
            }
        }
        if set.count() == 0 {
            return Err(CpuListError::Empty);
        }
        Ok(set)
    }

    pub fn insert(&mut self, cpu: usize) {
        self.0[cpu / 64] |= 1 << (cpu % 64);
    }

    pub fn contains(&self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.0[cpu / 64] & (1 << (cpu % 64)) != 0
    }

    pub fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_CPUS).filter(|&c| self.contains(c))
    }

    /// CPUs of `self` that are not in `other`.
    pub fn minus(&self, other: &CpuSet) -> CpuSet {
        let mut out = *self;
        for (w, o) in out.0.iter_mut().zip(other.0) {
            *w &= !o;
        }
        out
    }

    /// The set as a compact CPU list ("0-3,6").
    pub fn to_list(&self) -> String {
        let cpus: Vec<usize> = self.iter().collect();
        let mut parts = Vec::new();
        let mut i = 0;
        while i < cpus.len() {
            let mut j = i;
            while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
                j += 1;
            }
            parts.push(if i == j { cpus[i].to_string() } else { format!("{}-{}", cpus[i], cpus[j]) });
            i = j + 1;
        }
        parts.join(",")
    }
}

impl std::fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuSet({})", self.to_list())
    }
}

impl serde::Serialize for CpuSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_list())
    }
}

/// The CPUs this process may run on (its affinity mask).
pub fn allowed_cpus() -> std::io::Result<CpuSet> {
    let cpus = match crate::sys::affinity() {
        Ok(cpus) => cpus,
        // Without an affinity call, every CPU the standard library sees.
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            (0..std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).collect()
        }
        Err(e) => return Err(e),
    };
    let mut set = CpuSet::empty();
    cpus.into_iter().filter(|&cpu| cpu < MAX_CPUS).for_each(|cpu| set.insert(cpu));
    Ok(set)
}
