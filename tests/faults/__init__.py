"""Deliberately broken optimizers, one per way an optimizer can fail a cell (`tests.faults.optimizers.<Name>`)."""
