"""Pictures of a trained network: layer outputs, saliency, Grad-CAM, figures, the HTML report, the gallery."""
