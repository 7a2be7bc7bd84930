//! numpy's legacy `RandomState` (MT19937), reproduced bit for bit where the
//! MICRON reference depends on it: `np.random.seed(n)` followed by
//! `np.random.shuffle(list)` decides the train/test/validation split.
//!
//! Only the pieces the reference uses are implemented: integer seeding
//! (`init_genrand`), array seeding (`init_by_array`), raw 32-bit draws,
//! bounded integers by masked rejection (`random_interval`) and the
//! Fisher-Yates shuffle that `RandomState.shuffle` runs.

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// MT19937 with numpy's legacy seeding and sampling routines.
#[derive(Clone)]
pub struct NumpyRandomState {
    mt: [u32; N],
    pos: usize,
}

impl std::fmt::Debug for NumpyRandomState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NumpyRandomState").field("pos", &self.pos).finish_non_exhaustive()
    }
}

impl NumpyRandomState {
    /// `np.random.seed(seed)` / `RandomState(seed)` for an integer seed
    /// (numpy accepts 0..=2^32-1 and seeds with `init_genrand`).
    pub fn new(seed: u32) -> Self {
        let mut mt = [0u32; N];
        mt[0] = seed;
        for i in 1..N {
            mt[i] = 1_812_433_253u32.wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Self { mt, pos: N }
    }

    /// `RandomState(array)` for a sequence of 32-bit words (`init_by_array`).
    pub fn from_array(key: &[u32]) -> Self {
        let mut s = Self::new(19_650_218);
        let mt = &mut s.mt;
        let (mut i, mut j) = (1usize, 0usize);
        let len = key.len().max(1);
        let mut k = N.max(key.len());
        while k > 0 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            let kj = key.get(j).copied().unwrap_or(0);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_664_525)).wrapping_add(kj).wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= len {
                j = 0;
            }
            k -= 1;
        }
        k = N - 1;
        while k > 0 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            k -= 1;
        }
        mt[0] = 0x8000_0000;
        s.pos = N;
        s
    }

    /// The internal key words (what `get_state()[1]` shows).
    pub fn key(&self) -> &[u32; N] {
        &self.mt
    }

    fn generate(&mut self) {
        let mt = &mut self.mt;
        for kk in 0..N {
            let y = (mt[kk] & UPPER_MASK) | (mt[(kk + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            mt[kk] = mt[(kk + M) % N] ^ (y >> 1) ^ mag;
        }
        self.pos = 0;
    }

    /// One tempered 32-bit output (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= N {
            self.generate();
        }
        let mut y = self.mt[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (hi << 32) | lo
    }

    /// A uniform integer in `0..=max` by masked rejection, as numpy's
    /// `random_interval` (32-bit draws while `max` fits in 32 bits).
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        mask |= mask >> 1;
        mask |= mask >> 2;
        mask |= mask >> 4;
        mask |= mask >> 8;
        mask |= mask >> 16;
        mask |= mask >> 32;
        if max <= 0xffff_ffff {
            loop {
                let v = (self.next_u32() as u64) & mask;
                if v <= max {
                    return v;
                }
            }
        } else {
            loop {
                let v = self.next_u64() & mask;
                if v <= max {
                    return v;
                }
            }
        }
    }

    /// `RandomState.shuffle(x)`: for i from n-1 down to 1, swap x[i] with
    /// x[j], j uniform in 0..=i.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.interval(i as u64) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values below were produced by numpy 2.4.6 (legacy RandomState).
    #[test]
    fn seeding_matches_numpy_state() {
        let rs = NumpyRandomState::new(1203);
        assert_eq!((rs.key()[0], rs.key()[1], rs.key()[623]), (1203, 2_808_784_288, 1_572_696_139));
        let rs = NumpyRandomState::new(5489);
        assert_eq!(&rs.key()[..3], &[5489, 1_301_868_182, 2_938_499_221]);
        // RandomState([1, 2, 3]).get_state()[1][:3]
        let rs = NumpyRandomState::from_array(&[1, 2, 3]);
        assert_eq!(&rs.key()[..3], &[2_147_483_648, 188_977_461, 1_294_596_893]);
    }

    #[test]
    fn raw_outputs_match_numpy() {
        // RandomState(1203).randint(0, 2**32 - 1, size=4, dtype=np.int64):
        // a mask of 0xffffffff, so these are the raw 32-bit outputs.
        let mut rs = NumpyRandomState::new(1203);
        let got: Vec<u32> = (0..4).map(|_| rs.next_u32()).collect();
        assert_eq!(got, vec![2_682_580_408, 2_871_188_597, 4_173_298_461, 240_702_495]);
        // The reference MT19937 test vector: seed 5489, first output.
        assert_eq!(NumpyRandomState::new(5489).next_u32(), 3_499_211_612);
    }

    #[test]
    fn shuffle_matches_numpy() {
        // np.random.seed(1203); l = list(range(20)); np.random.shuffle(l)
        let mut v: Vec<usize> = (0..20).collect();
        NumpyRandomState::new(1203).shuffle(&mut v);
        assert_eq!(v, vec![10, 0, 11, 1, 12, 5, 18, 6, 15, 13, 2, 9, 8, 19, 7, 4, 17, 16, 14, 3]);
        // the same for range(6350), the size of the MIMIC-III cohort
        let mut v: Vec<usize> = (0..6350).collect();
        NumpyRandomState::new(1203).shuffle(&mut v);
        assert_eq!(&v[..12], &[2307, 379, 4688, 3156, 36, 1092, 527, 1815, 4773, 2155, 4399, 3828]);
        assert_eq!(&v[3810..3815], &[2359, 5528, 94, 2742, 4683]);
        assert_eq!(&v[5080..5085], &[1077, 4567, 1646, 4112, 5826]);
        assert_eq!(&v[6345..], &[3797, 2094, 2851, 5151, 3512]);
    }
}
