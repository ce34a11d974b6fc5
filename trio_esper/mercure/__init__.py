"""The Mercure hub (draft-dunglas-mercure): topic selectors, claims and publish forms."""
