"""fedintent: federated, differentially private intent classification for call centers."""
