"""wig's methods in other tools' own extension points (`wig.integrations.diffusers`: a guider)."""
