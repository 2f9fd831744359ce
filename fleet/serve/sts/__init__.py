"""STS (2011-06-15) as `fleet serve` answers it: GetCallerIdentity, over the Query protocol."""
