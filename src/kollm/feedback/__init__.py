"""Feedback: ratings and corrections of served answers, their statistics, and training data."""
