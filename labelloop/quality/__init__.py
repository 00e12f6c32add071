"""Label quality: the annotations the model disagrees with (cleanlab ObjectLab), scored and reported."""
