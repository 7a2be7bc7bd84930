//! From FHIR codings to medchange codes.
//!
//! Each code set (diagnoses, procedures, medications) has a *native*
//! coding system: the one the model's vocabulary is written in (ICD-9-CM
//! for diagnoses and procedures, ATC for medications in the shipped
//! model). A coding of the native system is stored as the bare code,
//! normalised (ICD-9 dots removed, ATC cut to level 3). A coding of another
//! accepted system is looked up in the admin's code map for the set and
//! stored as the mapped code; without a mapping it is stored as
//! `alias:code` (e.g. `sct:44054006`, `rxnorm:314076`), so the system stays
//! with the code, the model ignores it as unknown (and says so), and the
//! import reports it as unmapped. Codings of systems not accepted for the
//! set are not used (counted as rejected).
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{domain::codes::MAX_CODE_LEN, http::error::FieldError};

pub const SNOMED: &str = "http://snomed.info/sct";
pub const ICD9CM: &str = "http://hl7.org/fhir/sid/icd-9-cm";
pub const ICD10CM: &str = "http://hl7.org/fhir/sid/icd-10-cm";
pub const ICD10: &str = "http://hl7.org/fhir/sid/icd-10";
pub const ICD10PCS: &str = "http://www.cms.gov/Medicare/Coding/ICD10";
pub const CPT: &str = "http://www.ama-assn.org/go/cpt";
pub const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
pub const ATC: &str = "http://www.whocc.no/atc";
pub const NDC: &str = "http://hl7.org/fhir/sid/ndc";

/// The three code sets of a visit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CodeSetKind {
    Diagnoses,
    Procedures,
    Medications,
}

impl CodeSetKind {
    pub const ALL: [CodeSetKind; 3] = [CodeSetKind::Diagnoses, CodeSetKind::Procedures, CodeSetKind::Medications];
    pub fn as_str(self) -> &'static str {
        match self {
            CodeSetKind::Diagnoses => "diagnoses",
            CodeSetKind::Procedures => "procedures",
            CodeSetKind::Medications => "medications",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// How one code set is fed from FHIR codings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSettings {
    /// The model's coding system for this set: its codes are stored bare.
    pub native: String,
    /// Systems whose codings feed this set, preferred first (the native
    /// system is always accepted and preferred).
    pub accept: Vec<String>,
    /// Remove dots from native codes (ICD-9-CM `401.9` -> `4019`, the MIMIC form).
    #[serde(default)]
    pub strip_dots: bool,
    /// Cut native codes to this many characters (ATC level 3 = 4: `N02BE01` -> `N02B`).
    #[serde(default)]
    pub truncate: Option<usize>,
    /// `keep` (default): store codes without a mapping as `alias:code`;
    /// `skip`: leave them out of the visit (still counted and reported).
    #[serde(default)]
    pub unmapped: UnmappedPolicy,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnmappedPolicy {
    #[default]
    Keep,
    Skip,
}

/// Which coding systems feed each code set, and the short names that
/// prefix codes of non-native systems.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "diagnoses": {"native": ICD9CM, "accept": [ICD9CM, ICD10CM, SNOMED], "strip_dots": true, "truncate": null, "unmapped": "keep"},
    "procedures": {"native": ICD9CM, "accept": [ICD9CM, SNOMED, CPT, ICD10PCS], "strip_dots": true, "truncate": null, "unmapped": "keep"},
    "medications": {"native": ATC, "accept": [ATC, RXNORM, NDC], "strip_dots": false, "truncate": 4, "unmapped": "keep"},
    "aliases": {ICD9CM: "icd9cm", SNOMED: "sct", RXNORM: "rxnorm", ATC: "atc"}
}))]
pub struct FhirSettings {
    pub diagnoses: SetSettings,
    pub procedures: SetSettings,
    pub medications: SetSettings,
    /// System URI -> short alias (letters, digits, `-`, `_`, `.`; at most
    /// 16 characters). Every accepted system needs one (the well-known ones
    /// have defaults).
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
}

fn default_aliases() -> BTreeMap<String, String> {
    [
        (SNOMED, "sct"),
        (ICD9CM, "icd9cm"),
        (ICD10CM, "icd10cm"),
        (ICD10, "icd10"),
        (ICD10PCS, "icd10pcs"),
        (CPT, "cpt"),
        (RXNORM, "rxnorm"),
        (ATC, "atc"),
        (NDC, "ndc"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

impl Default for FhirSettings {
    fn default() -> Self {
        let s = |native: &str, accept: &[&str], strip_dots: bool, truncate: Option<usize>| SetSettings {
            native: native.into(),
            accept: accept.iter().map(|s| s.to_string()).collect(),
            strip_dots,
            truncate,
            unmapped: UnmappedPolicy::Keep,
        };
        FhirSettings {
            diagnoses: s(ICD9CM, &[ICD9CM, ICD10CM, ICD10, SNOMED], true, None),
            procedures: s(ICD9CM, &[ICD9CM, SNOMED, CPT, ICD10PCS], true, None),
            medications: s(ATC, &[ATC, RXNORM, NDC], false, Some(4)),
            aliases: default_aliases(),
        }
    }
}

impl FhirSettings {
    pub fn set(&self, kind: CodeSetKind) -> &SetSettings {
        match kind {
            CodeSetKind::Diagnoses => &self.diagnoses,
            CodeSetKind::Procedures => &self.procedures,
            CodeSetKind::Medications => &self.medications,
        }
    }

    /// The alias of a system (configured, else the well-known default).
    pub fn alias(&self, system: &str) -> Option<&str> {
        self.aliases.get(system).map(String::as_str)
    }

    /// Settings as given, with the default aliases filled in; every rule
    /// checked (pointers into the settings document).
    pub fn validated(mut self) -> Result<Self, Vec<FieldError>> {
        for (k, v) in default_aliases() {
            self.aliases.entry(k).or_insert(v);
        }
        let mut errors = vec![];
        for (system, alias) in &self.aliases {
            let ok = !alias.is_empty()
                && alias.len() <= 16
                && alias.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                errors.push(FieldError::new(
                    format!("/aliases/{}", system.replace('~', "~0").replace('/', "~1")),
                    "an alias is 1 to 16 letters, digits, `-`, `_` or `.`",
                ));
            }
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (system, alias) in &self.aliases {
            if let Some(other) = seen.insert(alias.as_str(), system.as_str()) {
                errors.push(FieldError::new("/aliases", format!("alias `{alias}` names both {other} and {system}")));
            }
        }
        for kind in CodeSetKind::ALL {
            let s = self.set(kind);
            let p = format!("/{}", kind.as_str());
            if s.native.trim().is_empty() {
                errors.push(FieldError::new(format!("{p}/native"), "must name a coding system"));
            }
            for (i, sys) in s.accept.iter().enumerate() {
                if sys.trim().is_empty() {
                    errors.push(FieldError::new(format!("{p}/accept/{i}"), "must name a coding system"));
                } else if *sys != s.native && self.alias(sys).is_none() {
                    errors.push(FieldError::new(
                        format!("{p}/accept/{i}"),
                        format!("system {sys} has no alias: add one under /aliases"),
                    ));
                }
            }
            if s.truncate == Some(0) {
                errors.push(FieldError::new(format!("{p}/truncate"), "must be at least 1"));
            }
        }
        if errors.is_empty() { Ok(self) } else { Err(errors) }
    }

    /// The (system, code) a stored code stands for: `alias:code` codes carry
    /// their system, bare codes are of the set's native system.
    pub fn coding_of(&self, kind: CodeSetKind, stored: &str) -> (String, String) {
        if let Some((alias, code)) = stored.split_once(':')
            && let Some((system, _)) = self.aliases.iter().find(|(_, a)| a.as_str() == alias)
        {
            return (system.clone(), code.to_string());
        }
        (self.set(kind).native.clone(), stored.to_string())
    }
}

/// One FHIR coding.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Coding {
    pub system: String,
    pub code: String,
    pub display: Option<String>,
}

/// How a code was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// A native-system code.
    Native,
    /// Mapped through the admin's code map.
    Mapped,
    /// Another accepted system without a mapping (`alias:code`).
    Unmapped,
}

/// The code chosen for a concept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// The code as stored in the visit (`None`: unmapped and the set skips those).
    pub stored: Option<String>,
    pub how: Choice,
    /// The coding it came from.
    pub from: Coding,
}

/// Why no code was taken from a concept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoCode {
    /// No coding of an accepted system (the systems seen).
    NotAccepted(Vec<String>),
    /// The resulting code breaks the code rules (too long, control characters).
    Invalid(Coding),
}

/// Looks codes up in the admin's code maps: (set, system, code) -> code.
pub type CodeMaps = HashMap<(CodeSetKind, String, String), String>;

fn normalise(s: &SetSettings, code: &str) -> String {
    let mut c: String = code.trim().to_string();
    if s.strip_dots {
        c.retain(|ch| ch != '.');
    }
    if let Some(n) = s.truncate
        && c.chars().count() > n
    {
        c = c.chars().take(n).collect();
    }
    c
}

fn valid_code(c: &str) -> bool {
    !c.is_empty() && c.chars().count() <= MAX_CODE_LEN && !c.chars().any(char::is_control)
}

/// Picks the code for a concept's codings: a native coding first, then a
/// mapped one, then an unmapped one of the most preferred accepted system.
pub fn choose(
    settings: &FhirSettings,
    maps: &CodeMaps,
    kind: CodeSetKind,
    codings: &[Coding],
) -> Result<Chosen, NoCode> {
    let s = settings.set(kind);
    let rank = |sys: &str| s.accept.iter().position(|a| a == sys);
    let mut best: Option<(u8, usize, Chosen)> = None;
    let mut consider = |tier: u8, pos: usize, c: Chosen| {
        if best.as_ref().is_none_or(|(t, p, _)| (tier, pos) < (*t, *p)) {
            best = Some((tier, pos, c));
        }
    };
    for c in codings {
        if c.system == s.native {
            consider(0, 0, Chosen { stored: Some(normalise(s, &c.code)), how: Choice::Native, from: c.clone() });
        } else if let Some(to) = maps.get(&(kind, c.system.clone(), c.code.trim().to_string())) {
            consider(
                1,
                rank(&c.system).unwrap_or(usize::MAX),
                Chosen { stored: Some(to.clone()), how: Choice::Mapped, from: c.clone() },
            );
        } else if let Some(pos) = rank(&c.system)
            && let Some(alias) = settings.alias(&c.system)
        {
            let stored = match s.unmapped {
                UnmappedPolicy::Keep => Some(format!("{alias}:{}", c.code.trim())),
                UnmappedPolicy::Skip => None,
            };
            consider(2, pos, Chosen { stored, how: Choice::Unmapped, from: c.clone() });
        }
    }
    match best {
        Some((_, _, c)) => match &c.stored {
            Some(code) if !valid_code(code) => Err(NoCode::Invalid(c.from)),
            _ => Ok(c),
        },
        None => {
            let mut systems: Vec<String> = codings.iter().map(|c| c.system.clone()).collect();
            systems.sort();
            systems.dedup();
            Err(NoCode::NotAccepted(systems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(system: &str, code: &str) -> Coding {
        Coding { system: system.into(), code: code.into(), display: None }
    }

    #[test]
    fn native_then_mapped_then_unmapped() {
        let s = FhirSettings::default();
        let mut maps = CodeMaps::new();
        let d = CodeSetKind::Diagnoses;
        assert_eq!(
            choose(&s, &maps, d, &[c(SNOMED, "44054006"), c(ICD9CM, "250.00")]).unwrap().stored.unwrap(),
            "25000"
        );
        let got = choose(&s, &maps, d, &[c(SNOMED, "44054006")]).unwrap();
        assert_eq!((got.stored.as_deref(), got.how), (Some("sct:44054006"), Choice::Unmapped));
        maps.insert((d, SNOMED.into(), "44054006".into()), "25000".into());
        let got = choose(&s, &maps, d, &[c(SNOMED, "44054006")]).unwrap();
        assert_eq!((got.stored.as_deref(), got.how), (Some("25000"), Choice::Mapped));
        let m = CodeSetKind::Medications;
        assert_eq!(choose(&s, &maps, m, &[c(ATC, "N02BE01")]).unwrap().stored.unwrap(), "N02B");
        assert_eq!(
            choose(&s, &maps, m, &[c("http://loinc.org", "1234-5")]),
            Err(NoCode::NotAccepted(vec!["http://loinc.org".into()]))
        );
    }

    #[test]
    fn stored_codes_give_their_coding_back() {
        let s = FhirSettings::default();
        assert_eq!(s.coding_of(CodeSetKind::Medications, "N02B"), (ATC.to_string(), "N02B".to_string()));
        assert_eq!(s.coding_of(CodeSetKind::Medications, "rxnorm:314076"), (RXNORM.to_string(), "314076".to_string()));
    }

    #[test]
    fn settings_need_aliases_for_accepted_systems() {
        let mut s = FhirSettings::default();
        s.diagnoses.accept.push("urn:oid:1.2.3".into());
        let e = s.clone().validated().unwrap_err();
        assert_eq!(e[0].pointer, "/diagnoses/accept/4");
        s.aliases.insert("urn:oid:1.2.3".into(), "local".into());
        assert!(s.validated().is_ok());
    }
}
