"""The reading layer: how ketamine-cds gets and reads the patient's FHIR record.

Request → FHIR access (:mod:`.prefetch`, :mod:`.fhir_client`) → record (:mod:`.record`) →
facts (:mod:`.facts`, with :mod:`.terminology` and the defensive readers of :mod:`.raw`).
Everything a rule knows about the patient comes through this package.
"""
