// Prepare a picture for upload: pictures larger than the model ever needs are reduced in the
// browser first (faster uploads on phones, and fewer rejections at the 6 MB API limit).

/** Long side after reduction: well above the model's 150 px input and the map's thumbnails. */
export const MAX_UPLOAD_SIDE = 2048;
export const JPEG_QUALITY = 0.9;

/**
 * Decode `file` keeping its EXIF orientation and, when its long side is over MAX_UPLOAD_SIDE or
 * it is over `maxBytes`, re-encode it as a JPEG with the long side at most MAX_UPLOAD_SIDE.
 * Returns {blob, decoded, reduced, width, height, originalWidth, originalHeight}; a file the
 * browser cannot decode (TIFF) is sent as it is and the server judges it.
 */
export async function prepareUpload(file, maxBytes) {
  let bitmap;
  try {
    // "from-image" applies the EXIF orientation, so the reduced copy is upright like the preview.
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch {
    return { blob: file, decoded: false, reduced: false };
  }
  const width = bitmap.width;
  const height = bitmap.height;
  const longSide = Math.max(width, height);
  if (longSide <= MAX_UPLOAD_SIDE && file.size <= maxBytes) {
    bitmap.close();
    return { blob: file, decoded: true, reduced: false, width, height, originalWidth: width, originalHeight: height };
  }
  const scale = Math.min(1, MAX_UPLOAD_SIDE / longSide);
  const outWidth = Math.max(1, Math.round(width * scale));
  const outHeight = Math.max(1, Math.round(height * scale));
  const canvas = new OffscreenCanvas(outWidth, outHeight);
  const ctx = canvas.getContext("2d");
  // JPEG has no transparency: composite on white as a printed page would show it.
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, outWidth, outHeight);
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, outWidth, outHeight);
  bitmap.close();
  const blob = await canvas.convertToBlob({ type: "image/jpeg", quality: JPEG_QUALITY });
  return {
    blob,
    decoded: true,
    reduced: true,
    width: outWidth,
    height: outHeight,
    originalWidth: width,
    originalHeight: height,
  };
}

/** Hex SHA-256 of a Blob, computed in the browser (the same digest the server reports). */
export async function sha256Hex(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
