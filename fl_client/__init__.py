"""The site side of fedintent: everything that touches conversation text stays in here."""
