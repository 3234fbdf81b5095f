"""The users service: customer accounts (argon2-hashed passwords) and login sessions."""
