"""Adapters: one module (or small package) per external system, behind ``core.protocols``."""
