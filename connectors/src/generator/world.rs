//! The simulated world: the reference data of regions, cities, species and
//! occupancy, the state of each tree, and the tree registry events
//! (registration, re-surveys, removals and re-registrations).

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use treeai_dataflows::event::EventKind;

use super::json::write_tree;
use super::schedule::PendingWhat;
use super::{mix64, Emitted, Generator};

/// Share of registry updates after the initial registration.
pub(super) const REGISTRY_UPDATE_SHARE: f64 = 0.0002;
/// Share of registry updates that remove the tree (re-registered later).
const DELETE_SHARE: f64 = 0.03;

// ---------------------------------------------------------------------------
// Reference data
// ---------------------------------------------------------------------------

pub(super) const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-southeast"];
const REGION_WEIGHTS: [f64; 3] = [0.40, 0.35, 0.25];
pub(super) const OCCUPANCY: [&str; 4] = ["rare", "occasional", "frequent", "constant"];
const OCCUPANCY_WEIGHTS: [f64; 4] = [0.15, 0.35, 0.35, 0.15];

/// A city box: (lat_min, lat_max, lon_min, lon_max, weight).
type City = (f64, f64, f64, f64, f64);

/// City boxes per region.
const CITIES: [&[City]; 3] = [
    &[
        (40.55, 40.88, -74.05, -73.75, 0.45), // New York
        (42.28, 42.39, -71.15, -71.00, 0.15), // Boston
        (39.90, 40.10, -75.25, -75.02, 0.20), // Philadelphia
        (38.82, 38.98, -77.10, -76.92, 0.20), // Washington, DC
    ],
    &[
        (51.36, 51.62, -0.40, 0.20, 0.40),  // London
        (53.29, 53.41, -6.38, -6.13, 0.15), // Dublin
        (48.82, 48.90, 2.25, 2.42, 0.25),   // Paris
        (52.30, 52.42, 4.78, 5.00, 0.20),   // Amsterdam
    ],
    &[
        (-33.98, -33.72, 151.00, 151.28, 0.35), // Sydney
        (-37.92, -37.72, 144.88, 145.10, 0.30), // Melbourne
        (1.28, 1.44, 103.70, 103.98, 0.20),     // Singapore
        (-36.95, -36.80, 174.68, 174.84, 0.15), // Auckland
    ],
];

pub(super) const SPECIES: [&[&str]; 3] = [
    &[
        "Platanus x acerifolia",
        "Acer rubrum",
        "Acer saccharinum",
        "Acer platanoides",
        "Quercus palustris",
        "Quercus rubra",
        "Gleditsia triacanthos",
        "Tilia cordata",
        "Ginkgo biloba",
        "Pyrus calleryana",
        "Zelkova serrata",
        "Ulmus americana",
        "Fraxinus pennsylvanica",
        "Liquidambar styraciflua",
        "Celtis occidentalis",
        "Styphnolobium japonicum",
    ],
    &[
        "Platanus x acerifolia",
        "Tilia x europaea",
        "Acer pseudoplatanus",
        "Acer platanoides",
        "Quercus robur",
        "Fraxinus excelsior",
        "Betula pendula",
        "Aesculus hippocastanum",
        "Carpinus betulus",
        "Prunus avium",
        "Sorbus aria",
        "Ulmus x hollandica",
        "Fagus sylvatica",
        "Alnus glutinosa",
        "Corylus colurna",
    ],
    &[
        "Lophostemon confertus",
        "Eucalyptus camaldulensis",
        "Corymbia maculata",
        "Jacaranda mimosifolia",
        "Ficus microcarpa",
        "Melaleuca quinquenervia",
        "Angophora costata",
        "Platanus x acerifolia",
        "Samanea saman",
        "Tabebuia rosea",
        "Khaya senegalensis",
        "Pterocarpus indicus",
        "Metrosideros excelsa",
        "Ulmus parvifolia",
    ],
];

// ---------------------------------------------------------------------------
// Tree state
// ---------------------------------------------------------------------------

// Optional fields of a registry entry (`TreeState::fields`).
pub(super) const F_SPECIES: u8 = 1;
pub(super) const F_DBH: u8 = 2;
pub(super) const F_HEIGHT: u8 = 4;
pub(super) const F_OCCUPANCY: u8 = 8;
pub(super) const F_TILT: u8 = 16;
pub(super) const F_SWAY: u8 = 32;
pub(super) const F_ALL: u8 = 63;

/// One tree and its sensors.
#[derive(Clone, Debug)]
pub(super) struct TreeState {
    pub(super) lat: f64,
    pub(super) lon: f64,
    pub(super) dbh: f64,
    pub(super) height: f64,
    pub(super) base_tilt: f64,
    pub(super) base_sway: f64,
    /// 0 (sound) … 1 (very weak): drives ratings, storm response, defects.
    pub(super) weakness: f32,
    /// Offset of this spot's soil moisture from the regional level.
    pub(super) soil_offset: f32,
    /// Slow random walk of the tilt around its baseline.
    pub(super) tilt_drift: f32,
    pub(super) species: u8,
    pub(super) region: u8,
    pub(super) occupancy: u8,
    /// Optional fields present in its registry entry (F_* bits).
    pub(super) fields: u8,
    pub(super) deleted: bool,
}

impl TreeState {
    /// The attributes of tree `idx`, a pure function of (seed, idx).
    pub(super) fn new(seed: u64, idx: u64) -> TreeState {
        let mut r = Pcg64Mcg::seed_from_u64(mix64(seed ^ mix64(idx.wrapping_add(0x7EE5_0000_0000_0000))));
        let region = pick_weighted(&mut r, &REGION_WEIGHTS);
        let cities = CITIES[region];
        let weights: Vec<f64> = cities.iter().map(|c| c.4).collect();
        let c = cities[pick_weighted(&mut r, &weights)];
        let lat = c.0 + (c.1 - c.0) * r.random::<f64>();
        let lon = c.2 + (c.3 - c.2) * r.random::<f64>();
        let species = r.random_range(0..SPECIES[region].len()) as u8;
        let mut dbh = 8.0 + 110.0 * r.random::<f64>().powf(1.6);
        if r.random::<f64>() < 0.03 {
            dbh = r.random_range(120.0..250.0); // veterans
        }
        let height = (1.3 + 28.0 * (1.0 - (-dbh / 55.0).exp()) * (0.8 + 0.4 * r.random::<f64>())).clamp(2.0, 45.0);
        let base_tilt = 5.0 * r.random::<f64>().powf(2.5);
        let base_sway = (1.55 - dbh / 110.0 + (r.random::<f64>() - 0.5) * 0.3).clamp(0.3, 1.5);
        let weakness = (r.random::<f64>().powi(3) + if dbh > 100.0 { 0.1 } else { 0.0 }).min(1.0) as f32;
        let occupancy = pick_weighted(&mut r, &OCCUPANCY_WEIGHTS) as u8;
        let soil_offset = ((r.random::<f64>() - 0.5) * 30.0) as f32;
        let mut fields = 0;
        for (bit, p) in [(F_SPECIES, 0.95), (F_DBH, 0.97), (F_HEIGHT, 0.93), (F_OCCUPANCY, 0.95), (F_SWAY, 0.97)] {
            if r.random::<f64>() < p {
                fields |= bit;
            }
        }
        // A missing baseline tilt means 0, so only omit it where it is about 0.
        if base_tilt >= 0.3 || r.random::<f64>() < 0.5 {
            fields |= F_TILT;
        }
        TreeState {
            lat,
            lon,
            dbh,
            height,
            base_tilt,
            base_sway,
            weakness,
            soil_offset,
            tilt_drift: 0.0,
            species,
            region: region as u8,
            occupancy,
            fields,
            deleted: false,
        }
    }
}

fn pick_weighted(rng: &mut Pcg64Mcg, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

// ---------------------------------------------------------------------------
// Registry events
// ---------------------------------------------------------------------------

impl Generator {
    pub(super) fn emit_tree(&mut self, j: usize, now: i64) -> Emitted {
        let idx = self.tree_index(j);
        let int = self.ts_as_int();
        write_tree(&mut self.buf, idx, &self.trees[j], now, int, false);
        (EventKind::Tree, idx, now)
    }

    pub(super) fn registry_update(&mut self, now: i64) -> Emitted {
        let j = self.rng.random_range(0..self.trees.len());
        let u = self.unit();
        let t = &mut self.trees[j];
        if t.deleted {
            // A removed tree shows up in the inventory again.
            t.deleted = false;
        } else if u < DELETE_SHARE {
            t.deleted = true;
            let delay = self.rng.random_range(60_000..=3_600_000);
            self.schedule(now + delay, PendingWhat::Reregister(j as u32));
        } else {
            // A re-survey: the tree has grown, baselines re-measured.
            t.dbh = (t.dbh + self.rng.random_range(0.1..1.5)).min(400.0);
            t.height = (t.height + self.rng.random_range(0.0..0.3)).min(60.0);
            t.base_tilt = (t.base_tilt + self.rng.random_range(-0.2..0.3)).clamp(0.0, 5.0);
            t.base_sway = (t.base_sway * self.rng.random_range(0.97..1.02)).clamp(0.3, 1.5);
            if self.rng.random::<f64>() < 0.2 {
                t.occupancy = pick_weighted(&mut self.rng, &OCCUPANCY_WEIGHTS) as u8;
            }
            if t.fields & F_SPECIES == 0 && self.rng.random::<f64>() < 0.5 {
                t.fields |= F_SPECIES; // species identified on the re-survey
            }
        }
        self.emit_tree(j, now)
    }

    pub(super) fn reregister(&mut self, j: usize, now: i64) -> Emitted {
        let u = self.unit();
        let seed = self.rng.random::<u64>();
        let t = &mut self.trees[j];
        t.deleted = false;
        if u < 0.5 {
            // Replanted: a young tree at the same spot.
            let mut r = Pcg64Mcg::seed_from_u64(seed);
            t.dbh = r.random_range(4.0..12.0);
            t.height = r.random_range(2.0..5.0);
            t.base_tilt = r.random_range(0.0..0.8);
            t.base_sway = r.random_range(1.3..1.5);
            t.weakness = r.random_range(0.0..0.1);
            t.tilt_drift = 0.0;
            t.species = r.random_range(0..SPECIES[t.region as usize].len()) as u8;
            t.fields = F_ALL;
        }
        self.emit_tree(j, now)
    }
}
