VERSION = "dev"
