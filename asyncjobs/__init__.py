"""asyncjobs: background jobs for asyncio services, that are not lost and not run twice silently."""
