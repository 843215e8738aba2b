"""Compact cases' vocabulary: code systems, verified displays, units, routes and the keys each
entry allows (what :mod:`.resources` builds from and checks against)."""

from __future__ import annotations

import uuid

# -- code systems and displays ----------------------------------------------------------------------
SYSTEMS: dict[str, str] = {
    "rx": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "sct": "http://snomed.info/sct",
    "icd": "http://hl7.org/fhir/sid/icd-10-cm",
    "loinc": "http://loinc.org",
    "cpt": "http://www.ama-assn.org/go/cpt",
    "local": "http://ketamine-cds.local/CodeSystem/assessment",
}
UCUM = "http://unitsofmeasure.org"
TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"
DEFAULT_BASE = "https://fhir.example.org/r4"
DEFAULT_USER = "Practitioner/example"
EXTENSION_TIME = "ketamine-cds.evaluation-time"
HOOKS = ("patient-view", "order-select", "order-sign")
HOOK_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-5b7a-9c41-2e6d8f0a7b35")

# Displays copied verbatim from the project's shared clinical sources (value-set expansions unless
# noted); tests/test_compact.py checks every entry against them where a checkout has them
# (../shared). A code not listed gets no display.
DISPLAYS: dict[tuple[str, str], str] = {
    # RxNorm products (SCD/SBD): VSAC 196.12.1213 "Antidepressant Medication", 526.3.1566,
    # 1248.134 "CNS Depressants", CDC benzodiazepine-medications
    ("rx", "312938"): "sertraline 100 MG Oral Tablet",
    ("rx", "312941"): "sertraline 50 MG Oral Tablet",
    ("rx", "313585"): "24 HR venlafaxine 75 MG Extended Release Oral Capsule",
    ("rx", "596934"): "duloxetine 60 MG Delayed Release Oral Capsule",
    ("rx", "351250"): "escitalopram 20 MG Oral Tablet",
    ("rx", "310385"): "fluoxetine 20 MG Oral Capsule",
    ("rx", "313989"): "fluoxetine 40 MG Oral Capsule",
    ("rx", "200371"): "citalopram 20 MG Oral Tablet",
    ("rx", "993557"): "24 HR bupropion hydrochloride 300 MG Extended Release Oral Tablet",
    ("rx", "314111"): "mirtazapine 30 MG Oral Tablet",
    ("rx", "311726"): "mirtazapine 45 MG Oral Tablet",
    ("rx", "1439810"): "vortioxetine 20 MG Oral Tablet",
    ("rx", "312347"): "phenelzine 15 MG Oral Tablet",
    ("rx", "197901"): "lorazepam 1 MG Oral Tablet",
    ("rx", "198429"): "lamotrigine 200 MG Oral Tablet",
    ("rx", "312745"): "quetiapine 300 MG Oral Tablet",
    # RxNorm esketamine SBDF: knowledge.md Table 1 (S16, ndclist.com RxNorm mirror)
    ("rx", "2201625"): "esketamine Nasal Spray [Spravato]",
    # RxNorm ingredient (no product code verified for lithium): knowledge.md Table 1
    ("rx", "42351"): "lithium carbonate",
    # ICD-10-CM: VSAC 1029.314, 1029.332, 3157.4055
    ("icd", "F32.2"): "Major depressive disorder, single episode, severe without psychotic features",
    ("icd", "F33.1"): "Major depressive disorder, recurrent, moderate",
    ("icd", "F33.2"): "Major depressive disorder, recurrent severe without psychotic features",
    ("icd", "F33.3"): "Major depressive disorder, recurrent, severe with psychotic symptoms",
    ("icd", "F29"): "Unspecified psychosis not due to a substance or known physiological condition",
    ("icd", "F31.4"): "Bipolar disorder, current episode depressed, severe, without psychotic features",
    ("icd", "I10"): "Essential (primary) hypertension",
    ("icd", "Z33.1"): "Pregnant state, incidental",
    # SNOMED CT: VSAC 105.12.1007, 67.1.101.1.128, 526.3.378, 600.263
    ("sct", "36474008"): "Severe recurrent major depression without psychotic features (disorder)",
    ("sct", "371596008"): "Bipolar I disorder (disorder)",
    ("sct", "77386006"): "Pregnancy (finding)",
    ("sct", "59621000"): "Essential hypertension (disorder)",
    # LOINC: VSAC 1045.159, 1045.163, 67.1.101.1.263; answer LA15173-0: knowledge.md Table 4 (S11)
    ("loinc", "29463-7"): "Body weight",
    ("loinc", "8480-6"): "Systolic blood pressure",
    ("loinc", "44261-6"): "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]",
    (
        "loinc",
        "89204-2",
    ): "Patient Health Questionnaire-9: Modified for Teens total score [Reported.PHQ.Teen]",
    ("loinc", "LA15173-0"): "Pregnant",
    # the project's own local code system
    ("local", "madrs-total"): "MADRS total score",
}

# Human-readable text for codes that have no verified display (CodeableConcept.text, not display).
TEXTS: dict[tuple[str, str], str] = {
    ("loinc", "85354-9"): "Blood pressure panel",
    ("loinc", "8462-4"): "Diastolic blood pressure",
    ("loinc", "8867-4"): "Heart rate",
    ("loinc", "9279-1"): "Respiratory rate",
    ("loinc", "59408-5"): "Oxygen saturation by pulse oximetry",
    ("loinc", "2708-6"): "Oxygen saturation",
    ("loinc", "8302-2"): "Body height",
    ("loinc", "70274-6"): "GAD-7 total score",
    ("loinc", "82810-3"): "Pregnancy status",
    ("loinc", "93246-7"): "C-SSRS screen: wish to be dead",
    ("loinc", "93247-5"): "C-SSRS screen: non-specific active suicidal thoughts",
    ("loinc", "93248-3"): "C-SSRS screen: suicidal thoughts with method",
    ("loinc", "93249-1"): "C-SSRS screen: suicidal intent",
    ("cpt", "90870"): "Electroconvulsive therapy",
    ("rx", "238082"): "Ketamine HCl 50 mg/mL injection",
}

# Observation category and default UCUM unit by code.
VITAL_SIGNS = {"29463-7", "8302-2", "85354-9", "8480-6", "8462-4", "8867-4", "9279-1", "59408-5", "2708-6"}
SURVEYS = {"44261-6", "89204-2", "70274-6", "madrs-total", "93246-7", "93247-5", "93248-3", "93249-1"}
SOCIAL_HISTORY = {"82810-3"}
DEFAULT_UNITS = {
    "29463-7": "kg",
    "8302-2": "cm",
    "8867-4": "/min",
    "9279-1": "/min",
    "59408-5": "%",
    "2708-6": "%",
}
UNIT_TEXT = {"/min": "beats/minute", "mm[Hg]": "mmHg", "ug": "mcg"}
CATEGORY_DISPLAY = {"vital-signs": "Vital Signs", "survey": "Survey", "social-history": "Social History"}
CSSRS_ITEMS = ("93246-7", "93247-5", "93248-3", "93249-1")

ROUTES = {
    "iv": "intravenous",
    "nasal": "intranasal",
    "sc": "subcutaneous",
    "im": "intramuscular",
    "oral": "oral",
    "transdermal": "transdermal",
}
ESKETAMINE_PRODUCTS = {"2201623", "2201625"}
NAMED_FREQUENCIES = {"daily": "1/d", "qd": "1/d", "bid": "2/d", "tid": "3/d", "qid": "4/d", "weekly": "1/wk"}
TIMES_TEXT = {1: "once", 2: "twice", 3: "three times", 4: "four times"}
PERIOD_TEXT = {"d": "daily", "wk": "weekly", "h": "hourly"}

CONDITION_STATUS = {
    "active": "Active",
    "recurrence": "Recurrence",
    "relapse": "Relapse",
    "inactive": "Inactive",
    "remission": "Remission",
    "resolved": "Resolved",
}
MED_AS = {"request", "statement", "dispense", "administration"}

CASE_KEYS = {"id", "title", "description", "now", "hook", "site", "patient", "expect"} | {
    "conditions",
    "medications",
    "observations",
    "procedures",
    "orders",
    "allergies",
}
PATIENT_KEYS = {"id", "sex", "birthDate", "age", "name", "deceased"}
CONDITION_KEYS = {"code", "text", "onset", "abatement", "status", "verification", "recorded"}
_DOSAGE_KEYS = {"code", "text", "dose", "route", "frequency", "infusion_minutes", "note", "dosage_text"}
MEDICATION_KEYS = _DOSAGE_KEYS | {
    "as",
    "start",
    "end",
    "status",
    "dispenses",
    "reason",
    "date",
    "dates",
    "time",
}
OBSERVATION_KEYS = {"code", "text", "value", "systolic", "diastolic", "answer", "date", "time"} | {
    "category",
    "cssrs_screen",
    "status",
}
PROCEDURE_KEYS = {"code", "text", "date", "status"}
ALLERGY_KEYS = {"code", "text", "status", "verification", "criticality", "type", "reaction", "severity"}
ALLERGY_STATUS = ("active", "inactive", "resolved")
ALLERGY_VERIFICATION = ("unconfirmed", "confirmed", "refuted", "entered-in-error")
ORDER_KEYS = _DOSAGE_KEYS
