"""Log watches: sources, matching (fail2ban filters included), windows and responses."""
