"""Feedback messages (bounces, complaints, auto-replies, unsubscribe mail) read into Reports."""
