"""Reading images: one entry point for DICOM, PNG and JPEG."""
