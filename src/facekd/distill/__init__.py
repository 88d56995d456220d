"""Distillation: a frozen Teacher, one Distiller per method, and a teacher-output cache."""
